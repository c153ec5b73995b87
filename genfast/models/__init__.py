"""Model definitions: DCGAN, WGAN-GP critic, conv VAE / beta-VAE, plain autoencoder, class-conditional
U-Net, ProGAN, latent diffusion, pix2pix, CycleGAN, SRGAN/SRResNet and the digit classifier. The training
loops that use them live in genfast.training."""
from genfast.models.autoencoder import ConvAutoencoder
from genfast.models.classifier import DigitClassifier
from genfast.models.critic import WGANGPCritic
from genfast.models.cyclegan import CycleGAN, ImagePool, ResnetGenerator
from genfast.models.dcgan import DCGANDiscriminator, DCGANGenerator
from genfast.models.ldm import LatentAutoencoder, LatentDiffusion
from genfast.models.pix2pix import PatchDiscriminator, UNetGenerator
from genfast.models.progan import (EqualizedConv2d, EqualizedLinear, PixelNorm, ProGAN, ProGANCritic, ProGANGenerator,
                                   minibatch_stddev, pixel_norm)
from genfast.models.srgan import SRDiscriminator, SRResNet
from genfast.models.unet import UNet
from genfast.models.vae import ConvVAE

__all__ = ["WGANGPCritic", "DCGANDiscriminator", "DCGANGenerator", "UNet", "ConvVAE", "ConvAutoencoder",
           "DigitClassifier", "CycleGAN", "ImagePool", "ResnetGenerator", "LatentAutoencoder", "LatentDiffusion",
           "PatchDiscriminator", "UNetGenerator", "EqualizedConv2d", "EqualizedLinear", "PixelNorm", "ProGAN",
           "ProGANCritic", "ProGANGenerator", "minibatch_stddev", "pixel_norm", "SRDiscriminator", "SRResNet"]
