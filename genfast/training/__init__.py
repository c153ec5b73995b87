"""Training: the loops behind `genfast train` and `genfast compare`, and what they need.

  gan.py          GANTrainer: critic/generator steps with the fused gradient penalty, lazy
                  regularization, an optional CUDA-graph-captured critic step
  loop.py         TrainSettings, train(): deterministic, resumable training of every model kind, and the
                  trainers of DDPM, the DCGAN-family GANs and the VAE
  progan.py       ProGAN: growing schedule, WGAN-GP (fused penalty) + drift, EMA generator, snapshots
  ldm.py          latent diffusion: autoencoder stage, then the U-Net on scaled latents
  distill.py      progressive distillation into few-step v-prediction students (fused DDIM teacher steps)
  translation.py  pix2pix, CycleGAN, SRGAN / SRResNet on tasks derived from the data
  basic.py        the plain autoencoder and the digit classifier
  quality.py      sample quality: Frechet distance, confidence, accuracy on the digit classifier
  zoo.py          the model kinds, their default configs, the embedded weights, sampling
  data.py         digits / image folder / .npz data
  checkpoint.py   safetensors checkpoints (model, training state, optimizer)
  images.py       image grids, written with Pillow in the format the file name asks for
  distributed.py  torchrun: process group, DDP, rank slices, gather
"""
from genfast.training.gan import GANTrainer
from genfast.training.loop import BatchSource, TrainingDiverged, TrainingInterrupted, TrainSettings, make_trainer, train

__all__ = ["GANTrainer", "TrainSettings", "train", "TrainingInterrupted", "TrainingDiverged", "BatchSource", "make_trainer"]
