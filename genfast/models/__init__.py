"""Model definitions: DCGAN, WGAN-GP critic, conv VAE / beta-VAE, class-conditional U-Net."""
from genfast.models.unet import UNet  # noqa: E402
