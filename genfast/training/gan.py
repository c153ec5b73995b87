"""A GAN training step: n_critic critic (discriminator) steps per generator step, Adam with betas
(0.0, 0.9) by default (Gulrajani et al. 2017), the WGAN-GP penalty (or R1) through genfast's fused op,
optional lazy regularization (Karras et al. 2020, StyleGAN2: the penalty every k critic steps, its weight
multiplied by k), and optionally the critic step captured in a CUDA graph.

The graph path (cuda_graph=True, CUDA only): the critic step -- generator forward for the fakes, critic
losses, penalty (with its double backward) and the capturable Adam update -- is captured once per kind
(with / without the penalty when lazy) after a warm-up on a side stream, and replayed with static input
buffers: the real batch and labels are copied in, and a new seed is written into a device int64 tensor
from which genfast.ops.randn (z) and the penalty's alpha are drawn, so every replay draws new noise.
Shapes must stay fixed (drop_last in the data loader).
"""
from __future__ import annotations

import torch
from torch import nn

from genfast.losses import gan_losses
from genfast.ops import randn
from genfast.ops._stream import draw_seed, to_signed64
from genfast.ops.gradient_penalty import gradient_penalty, reference_gradient_penalty


class GANTrainer:
    """Trains `generator` (z [B, nz], y) and `critic` (x, y) -> [B].

    loss: one of genfast.losses.GAN_LOSSES ("wgan" by default). penalty: "two-sided" (WGAN-GP), "one-sided",
    "r1" or None. lazy_every: apply the penalty every k-th critic step with weight * k.
    penalty_impl: "genfast" (fused) or "plain" (textbook autograd; for comparison).
    """

    def __init__(self, generator: nn.Module, critic: nn.Module, *, nz: int, lr_g: float = 1e-4, lr_d: float = 1e-4,
                 betas: tuple[float, float] = (0.0, 0.9), n_critic: int = 5, loss: str = "wgan",
                 penalty: str | None = "two-sided", penalty_weight: float = 10.0, penalty_center: float = 1.0,
                 lazy_every: int = 1, penalty_impl: str = "genfast", cuda_graph: bool = False,
                 warmup_steps: int = 3):
        if n_critic < 1:
            raise ValueError(f"n_critic: must be >= 1, got {n_critic}")
        if lazy_every < 1:
            raise ValueError(f"lazy_every: must be >= 1, got {lazy_every}")
        if penalty_impl not in ("genfast", "plain"):
            raise ValueError(f"penalty_impl: expected 'genfast' or 'plain', got {penalty_impl!r}")
        self.generator, self.critic, self.nz = generator, critic, nz
        self.d_loss, self.g_loss = gan_losses(loss)
        self.penalty, self.penalty_weight, self.penalty_center = penalty, penalty_weight, penalty_center
        self.n_critic, self.lazy_every = n_critic, lazy_every
        self._penalty_fn = gradient_penalty if penalty_impl == "genfast" else reference_gradient_penalty
        self.cuda_graph = cuda_graph
        self.warmup_steps = warmup_steps
        # capturable Adam keeps its step on the device, so optimizer.step() can live inside a graph
        self.opt_d = torch.optim.Adam(critic.parameters(), lr=lr_d, betas=betas, capturable=cuda_graph)
        self.opt_g = torch.optim.Adam(generator.parameters(), lr=lr_g, betas=betas)
        self.critic_steps = 0
        self._graphs: dict[bool, tuple[torch.cuda.CUDAGraph, dict]] = {}
        self._static: dict | None = None
        self._pool = None

    # ---------------------------------------------------------------------------------------------
    def _uses_penalty(self) -> bool:
        return self.penalty is not None and self.critic_steps % self.lazy_every == 0

    def _critic_loss(self, real, y, seed, with_penalty: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        b = real.shape[0]
        with torch.no_grad():
            z = randn([b, self.nz], seed=seed, offset=0, dtype=real.dtype, device=real.device)
            fake = self.generator(z, y) if y is not None else self.generator(z)
        kw = {"y": y} if y is not None else {}
        loss = self.d_loss(self.critic(real, **kw), self.critic(fake, **kw))
        pen = None
        if with_penalty:
            pen = self._penalty_fn(self.critic, real, fake, weight=self.penalty_weight * self.lazy_every,
                                   center=self.penalty_center, mode=self.penalty, seed=seed, offset=1, **kw)
            loss = loss + pen
        return loss, pen

    def critic_step(self, real: torch.Tensor, y: torch.Tensor | None = None) -> dict:
        """One critic update on the real batch; returns {"loss": ..., "penalty": ... or None} (tensors)."""
        with_penalty = self._uses_penalty()
        if self.cuda_graph and real.is_cuda:
            out = self._critic_step_graphed(real, y, with_penalty)
        else:
            loss, pen = self._critic_loss(real, y, draw_seed(), with_penalty)
            self.opt_d.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_d.step()
            out = {"loss": loss.detach(), "penalty": None if pen is None else pen.detach()}
        self.critic_steps += 1
        return out

    def generator_step(self, batch_size: int, y: torch.Tensor | None = None, device=None,
                       dtype: torch.dtype = torch.float32) -> dict:
        device = device if device is not None else next(self.generator.parameters()).device
        z = randn([batch_size, self.nz], seed=draw_seed(), dtype=dtype, device=device)
        fake = self.generator(z, y) if y is not None else self.generator(z)
        # under DistributedDataParallel the frozen critic runs unwrapped: its reducer would wait for
        # gradients that never come
        critic = self.critic.module if isinstance(self.critic, nn.parallel.DistributedDataParallel) else self.critic
        for p in self.critic.parameters():
            p.requires_grad_(False)
        try:
            loss = self.g_loss(critic(fake, y=y) if y is not None else critic(fake))
        finally:
            for p in self.critic.parameters():
                p.requires_grad_(True)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        return {"loss": loss.detach()}

    def train_step(self, batches, labels=None) -> dict:
        """n_critic critic steps on the next n_critic real batches of the iterator `batches` (labels: an
        iterator of label batches, or None), then one generator step."""
        out = {}
        for _ in range(self.n_critic):
            real = next(batches)
            y = next(labels) if labels is not None else None
            out = self.critic_step(real, y)
        g = self.generator_step(real.shape[0], y, device=real.device, dtype=real.dtype)
        return {"critic_loss": out["loss"], "penalty": out["penalty"], "generator_loss": g["loss"]}

    # ---------------------------------------------------------------------------------------------
    # CUDA graph path (correct by construction; exercised only on a GPU)
    # ---------------------------------------------------------------------------------------------
    def _critic_state(self):
        """Copies of the critic's parameters, buffers and Adam state (empty before the first step)."""
        params = [p.detach().clone() for p in self.critic.parameters()]
        buffers = [b.detach().clone() for b in self.critic.buffers()]
        adam = [{k: v.clone() if torch.is_tensor(v) else v for k, v in self.opt_d.state.get(p, {}).items()}
                for p in self.critic.parameters()]
        return params, buffers, adam

    @torch.no_grad()
    def _restore_critic_state(self, saved) -> None:
        params, buffers, adam = saved
        for p, v in zip(self.critic.parameters(), params):
            p.copy_(v)
        for b, v in zip(self.critic.buffers(), buffers):
            b.copy_(v)
        for p, before in zip(self.critic.parameters(), adam):
            state = self.opt_d.state.get(p, {})
            for k, v in state.items():
                if not torch.is_tensor(v):
                    state[k] = before.get(k, 0)
                elif k in before:
                    v.copy_(before[k])
                else:  # Adam's state did not exist yet: a fresh one is all zeros (step 0 included)
                    v.zero_()

    def _graph_body(self, with_penalty: bool) -> dict:
        s = self._static
        for p in self.critic.parameters():  # .grad exists (warm-up) and is static: zero it inside the graph
            p.grad.zero_()
        loss, pen = self._critic_loss(s["real"], s["y"], s["seed"], with_penalty)
        loss.backward()
        self.opt_d.step()
        return {"loss": loss.detach(), "penalty": None if pen is None else pen.detach()}

    def _critic_step_graphed(self, real, y, with_penalty: bool) -> dict:
        if self._static is None or self._static["real"].shape != real.shape or self._static["real"].dtype != real.dtype:
            self._graphs.clear()
            self._static = {"real": real.detach().clone(), "y": None if y is None else y.detach().clone(),
                            "seed": torch.zeros((), dtype=torch.int64, device=real.device).reshape(1)}
        s = self._static
        s["real"].copy_(real)
        if y is not None:
            s["y"].copy_(y)
        s["seed"].fill_(to_signed64(draw_seed()))
        if with_penalty not in self._graphs:
            self._capture(with_penalty)
        graph, outputs = self._graphs[with_penalty]
        graph.replay()
        # the next replay overwrites the graph's output tensors: hand out copies
        return {k: None if v is None else v.clone() for k, v in outputs.items()}

    def _capture(self, with_penalty: bool) -> None:
        # Warm-up on a side stream (allocates .grad, Adam state and genfast's counters outside the graph).
        # Its optimizer steps are undone afterwards (weights, buffers and Adam state restored in place, at
        # the addresses the graph captures), so graph training takes the same steps as eager training.
        saved = self._critic_state()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup_steps):
                self.opt_d.zero_grad(set_to_none=False)
                loss, _ = self._critic_loss(self._static["real"], self._static["y"], self._static["seed"], with_penalty)
                loss.backward()
                for p in self.critic.parameters():
                    if p.grad is None:  # parameters the loss does not reach still need a static .grad
                        p.grad = torch.zeros_like(p)
                self.opt_d.step()
        torch.cuda.current_stream().wait_stream(side)
        self._restore_critic_state(saved)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            outputs = self._graph_body(with_penalty)
        if self._pool is None:
            self._pool = graph.pool()
        self._graphs[with_penalty] = (graph, outputs)
