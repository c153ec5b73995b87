"""Model definitions: DCGAN, WGAN-GP critic, conv VAE / beta-VAE, class-conditional U-Net."""
from genfast.models.critic import WGANGPCritic  # noqa: E402
from genfast.models.dcgan import DCGANDiscriminator, DCGANGenerator  # noqa: E402
from genfast.models.gan_training import GANTrainer  # noqa: E402
from genfast.models.unet import UNet  # noqa: E402
from genfast.models.vae import ConvVAE  # noqa: E402,F401
