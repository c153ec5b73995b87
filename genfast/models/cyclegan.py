"""CycleGAN (Zhu et al. 2017, "Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial
Networks"): two generators G: A -> B and F: B -> A and two PatchGAN discriminators (genfast.models.
PatchDiscriminator with instance norm), trained with the least-squares GAN loss, the cycle-consistency
loss |F(G(a)) - a|_1 + |G(F(b)) - b|_1 and optionally the identity loss |G(b) - b|_1 + |F(a) - a|_1.

The generator is the paper's ResNet one, scaled down: c7s1-k, a stride-2 conv, residual blocks, a
stride-2 transposed conv and c7s1 to the output with tanh; instance norm throughout, reflection padding.
"""
from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels),
                                  nn.ReLU(), nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3),
                                  nn.InstanceNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """images [B, in_channels, S, S] in [-1, 1] (S even) -> [B, out_channels, S, S] in [-1, 1]."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, ngf: int = 16, n_blocks: int = 3):
        super().__init__()
        self.in_channels = in_channels
        self.net = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU(),
            nn.Conv2d(ngf, 2 * ngf, 3, 2, 1), nn.InstanceNorm2d(2 * ngf), nn.ReLU(),
            *[ResidualBlock(2 * ngf) for _ in range(n_blocks)],
            nn.ConvTranspose2d(2 * ngf, ngf, 3, 2, 1, output_padding=1), nn.InstanceNorm2d(ngf), nn.ReLU(),
            nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[-1] % 2 or x.shape[-2] % 2:
            raise ValueError(f"x: expected [B, {self.in_channels}, H, W] with even H, W, got {tuple(x.shape)}")
        return self.net(x)


class CycleGAN(nn.Module):
    """The two generators: a_to_b (G) and b_to_a (F). forward(x, direction='a2b' | 'b2a')."""

    def __init__(self, channels: int = 1, ngf: int = 16, n_blocks: int = 3):
        super().__init__()
        self.a_to_b = ResnetGenerator(channels, channels, ngf, n_blocks)
        self.b_to_a = ResnetGenerator(channels, channels, ngf, n_blocks)

    def forward(self, x: torch.Tensor, direction: str = "a2b") -> torch.Tensor:
        if direction == "a2b":
            return self.a_to_b(x)
        if direction == "b2a":
            return self.b_to_a(x)
        raise ValueError(f"direction: expected 'a2b' or 'b2a', got {direction!r}")


class ImagePool(nn.Module):
    """The paper's history of generated images (Shrivastava et al. 2017): the discriminator sees, for each
    new fake, with probability 1/2 an older fake from the pool (which the new one replaces) once the pool
    is full. Kept in buffers so that a checkpoint holds it and --resume continues exactly."""

    def __init__(self, size: int, shape: tuple[int, ...]):
        super().__init__()
        self.size = size
        self.register_buffer("images", torch.zeros((size, *shape)))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def query(self, fakes: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return fakes
        out = fakes.clone()
        for i in range(fakes.shape[0]):
            n = int(self.count)
            if n < self.size:
                self.images[n] = fakes[i]
                self.count += 1
            elif torch.rand(()) < 0.5:
                j = int(torch.randint(0, self.size, ()))
                out[i] = self.images[j].to(out.dtype)
                self.images[j] = fakes[i]
        return out
