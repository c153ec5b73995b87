"""Model definitions: DCGAN, WGAN-GP critic, conv VAE / beta-VAE, class-conditional U-Net."""
from genfast.models.vae import ConvVAE  # noqa: E402,F401
