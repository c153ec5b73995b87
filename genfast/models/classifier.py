"""A small digit classifier: the fixed feature network of SRGAN's content loss and of `genfast compare`'s
sample-quality columns (Frechet distance on its features, its confidence and label accuracy).

It stands in for the ImageNet networks of the papers (VGG19 for SRGAN's content loss, Inception-v3 for
FID), which cannot be downloaded here: genfast trains it once on scikit-learn's digits
(`genfast train classifier`) and ships the weights (genfast/weights/classifier.safetensors).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DigitClassifier(nn.Module):
    """images [B, C, S, S] in [0, 1] (S divisible by 4) -> logits [B, num_classes].

    Two conv stages (each: 3x3 conv, 3x3 stride-2 conv, ReLU) to S/4 x S/4, then a `feature_dim`-wide
    hidden layer (the features of the Frechet distance) and the class logits.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 16, num_classes: int = 10, width: int = 32,
                 feature_dim: int = 64, dropout: float = 0.3):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size: must be a multiple of 4, got {image_size}")
        self.image_size, self.in_channels, self.num_classes = image_size, in_channels, num_classes
        self.stage1 = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                                    nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
                                    nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.hidden = nn.Linear(2 * width * (image_size // 4) ** 2, feature_dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(f"x: expected [B, {self.in_channels}, {self.image_size}, {self.image_size}], "
                             f"got {tuple(x.shape)}")

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The last conv stage's activations [B, 2 width, S/4, S/4] (SRGAN's content loss compares these)."""
        self._check(x)
        return self.stage2(self.stage1(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The hidden layer [B, feature_dim] (the Frechet distance compares these)."""
        return F.relu(self.hidden(self.feature_maps(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))
