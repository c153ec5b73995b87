"""Model definitions: DCGAN, WGAN-GP critic, conv VAE / beta-VAE, class-conditional U-Net. The training
loops that use them live in genfast.training."""
from genfast.models.critic import WGANGPCritic
from genfast.models.dcgan import DCGANDiscriminator, DCGANGenerator
from genfast.models.unet import UNet
from genfast.models.vae import ConvVAE

__all__ = ["WGANGPCritic", "DCGANDiscriminator", "DCGANGenerator", "UNet", "ConvVAE"]
