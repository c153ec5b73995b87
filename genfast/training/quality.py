"""Sample quality on the digits, measured with genfast's own digit classifier (genfast/weights/
classifier.safetensors, trained by `genfast train classifier`): the idea of FID (Heusel et al. 2017) with
a network that runs offline.

  frechet distance  between Gaussians fitted to the classifier's 64 hidden features of real digits (all
                    1,797) and of the samples: |mu_r - mu_g|^2 + tr(S_r + S_g - 2 (S_r S_g)^(1/2)).
                    Lower is better; it depends on the number of samples (use the same n to compare).
  confidence        the classifier's mean top softmax probability: do the samples look like some digit?
  accuracy          for models given a label (class-conditional diffusion, image-to-image on held-out
                    digits): how often the classifier reads the label the model was asked for.

Only for models of 1-channel 16 px images (the classifier's input); anything else raises ValueError.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from genfast.training.zoo import WEIGHTS_DIR

CLASSIFIER_PATH = WEIGHTS_DIR / "classifier.safetensors"
_CLASSIFIERS: dict = {}
_REAL_STATS: dict = {}


def load_classifier(device="cpu", path=None):
    """The shipped digit classifier (or the one in `path`), in eval mode with frozen weights, cached."""
    from genfast.models import DigitClassifier
    from genfast.training.checkpoint import load_checkpoint, unprefixed

    path = path or CLASSIFIER_PATH
    key = (str(path), str(device))
    if key not in _CLASSIFIERS:
        tensors, meta = load_checkpoint(path, "digit classifier")
        if meta.get("model") != "classifier":
            raise ValueError(f"digit classifier: {path} holds a {meta.get('model')} model")
        net = DigitClassifier(**meta["config"]["classifier"])
        net.load_state_dict({k: v.float() for k, v in unprefixed("model.", tensors).items()})
        net.eval().to(device)
        for p in net.parameters():
            p.requires_grad_(False)
        _CLASSIFIERS[key] = net
    return _CLASSIFIERS[key]


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, covariance) of features [N, D] in float64 (covariance normalized by N - 1)."""
    f = features.double()
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features: expected [N >= 2, D], got {tuple(f.shape)}")
    mu = f.mean(0)
    c = f - mu
    return mu, c.T @ c / (f.shape[0] - 1)


def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """Frechet distance between N(mu1, cov1) and N(mu2, cov2). tr (S1 S2)^(1/2) is computed as the sum of
    the square roots of the eigenvalues of S1^(1/2) S2 S1^(1/2), which is symmetric positive semi-definite
    (so no complex square roots and no iteration, unlike scipy.linalg.sqrtm)."""
    mu1, mu2, cov1, cov2 = (t.double() for t in (mu1, mu2, cov1, cov2))
    w, v = torch.linalg.eigh((cov1 + cov1.T) / 2)
    root1 = (v * w.clamp_min(0).sqrt()) @ v.T
    middle = root1 @ cov2 @ root1
    tr_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * tr_root)


@torch.no_grad()
def classify(images: torch.Tensor, classifier=None, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """images [N, 1, 16, 16] in [0, 1] -> (features [N, D], softmax probabilities [N, classes]) on the CPU."""
    classifier = classifier or load_classifier()
    device = next(classifier.parameters()).device
    expected = (classifier.in_channels, classifier.image_size, classifier.image_size)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(f"quality: the digit classifier reads [N, {', '.join(map(str, expected))}] images, "
                         f"got {tuple(images.shape)}")
    feats, probs = [], []
    for i in range(0, len(images), batch):
        x = images[i:i + batch].to(device, torch.float32).clamp(0, 1)
        f = classifier.features(x)
        feats.append(f.cpu())
        probs.append(torch.softmax(classifier.head(f), dim=1).cpu())
    return torch.cat(feats), torch.cat(probs)


def real_stats(classifier=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature mean and covariance of all the digits at the classifier's size (cached)."""
    from genfast.training.data import load_data

    classifier = classifier or load_classifier()
    key = id(classifier)
    if key not in _REAL_STATS:
        feats, _ = classify(load_data("digits", classifier.image_size).images, classifier)
        _REAL_STATS[key] = gaussian_stats(feats)
    return _REAL_STATS[key]


@dataclass
class Quality:
    frechet_distance: float
    confidence: float
    accuracy: float | None
    n: int

    def as_dict(self) -> dict:
        return {"frechet_distance": self.frechet_distance, "confidence": self.confidence, "accuracy": self.accuracy,
                "quality_n": self.n}


def measure(images: torch.Tensor, labels: torch.Tensor | None = None, classifier=None) -> Quality:
    """Frechet distance to the digits, mean confidence and (with labels) accuracy of images in [0, 1]."""
    classifier = classifier or load_classifier()
    feats, probs = classify(images, classifier)
    if not torch.isfinite(feats).all():
        raise ValueError("quality: the images give non-finite features")
    fd = frechet_distance(*real_stats(classifier), *gaussian_stats(feats))
    accuracy = None
    if labels is not None:
        accuracy = float((probs.argmax(1) == labels.cpu()).float().mean())
    return Quality(fd if math.isfinite(fd) else float("nan"), float(probs.max(1).values.mean()), accuracy, len(images))
