"""The plain autoencoder and the digit classifier.

  ae          Bernoulli reconstruction loss (BCE with logits, summed over pixels, batch mean); its sampling
              state refits the Gaussian over the training codes (the autoencoder has no prior of its own).
  classifier  cross-entropy on the training split with random 1-pixel shifts (so that it judges generated
              digits that sit a little off-centre as it judges real ones); logs its held-out accuracy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from genfast.losses import vae_reconstruction_nll


class AETrainer:
    default_lr = 1e-3

    def __init__(self, nets, config, lr, ddp, data):
        self.ae = nets["ae"]
        self.model = ddp(self.ae)
        self.opt = torch.optim.Adam(self.ae.parameters(), lr=lr or self.default_lr)
        self.images = data.images

    def optimizers(self):
        return {"opt": self.opt}

    def networks(self):
        return {"ae": self.ae}

    @torch.no_grad()
    def sampling_state(self):
        was = self.ae.training
        self.ae.eval()
        images = self.images.to(self.ae.prior_mean.device)
        self.ae.fit_prior(torch.cat([self.ae.encode(images[i:i + 512]) for i in range(0, len(images), 512)]))
        self.ae.train(was)
        return self.ae.state_dict()

    def train_step(self, source) -> dict:
        x, _ = source.next()
        recon, _ = self.model(x)
        loss = vae_reconstruction_nll(recon, x, "bernoulli")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach()}


def random_shift(x: torch.Tensor, pixels: int = 1) -> torch.Tensor:
    """Each image shifted by a random (dy, dx) in [-pixels, pixels]^2 (torch's generator), zero-filled."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pixels,) * 4)
    dy = torch.randint(0, 2 * pixels + 1, (b,))
    dx = torch.randint(0, 2 * pixels + 1, (b,))
    rows = (dy.view(b, 1) + torch.arange(h).view(1, h)).to(x.device)  # [b, h]
    cols = (dx.view(b, 1) + torch.arange(w).view(1, w)).to(x.device)  # [b, w]
    idx_b = torch.arange(b, device=x.device).view(b, 1, 1)
    out = padded.permute(0, 2, 3, 1)[idx_b, rows.view(b, h, 1), cols.view(b, 1, w)]  # [b, h, w, c]
    return out.permute(0, 3, 1, 2).contiguous()


class ClassifierTrainer:
    default_lr = 1e-3

    def __init__(self, nets, config, lr, ddp, test_data=None):
        self.classifier = nets["classifier"]
        self.model = ddp(self.classifier)
        self.opt = torch.optim.AdamW(self.classifier.parameters(), lr=lr or self.default_lr, weight_decay=1e-4)
        self.test = test_data

    def optimizers(self):
        return {"opt": self.opt}

    def networks(self):
        return {"classifier": self.classifier}

    def sampling_state(self):
        return self.classifier.state_dict()

    def train_step(self, source) -> dict:
        x, y = source.next()
        logits = self.model(random_shift(x))
        loss = F.cross_entropy(logits, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach(), "accuracy": (logits.argmax(1) == y).float().mean().detach()}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Accuracy on the held-out split."""
        if self.test is None:
            return {}
        was = self.classifier.training
        self.classifier.eval()
        device = next(self.classifier.parameters()).device
        pred = self.classifier(self.test.images.to(device)).argmax(1).cpu()
        self.classifier.train(was)
        return {"test_accuracy": float((pred == self.test.labels).float().mean()), "test_images": len(pred)}
