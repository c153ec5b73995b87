"""Progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion
Models") of a DDPM into few-step DDIM students, with the teacher's classifier-free guidance distilled in
as well (Meng et al. 2023): stage k trains a student that takes stages[k] DDIM steps to match two DDIM
steps of its teacher -- the DDPM sampled with 2 * stages[0] steps at the first stage, the previous
student after that -- so 50 steps become 25, 12, 6, 3 (and 1 if asked). Each stage starts from the last
student's weights and a fresh optimizer.

One training step: a data batch x0 and a student step i (uniform over the stage's DDIM table, so the
student learns exactly the transitions (t_i, a_t) -> a_prev its sampler takes); x_t = sqrt(a_t) x0 +
sqrt(1 - a_t) eps; the teacher takes two DDIM steps x_t -> x_mid -> x_prev with genfast's fused
`ddim_step` (the midpoint is step 2i+1 of the table with twice the steps; a clipping teacher -- the DDPM --
recomputes its noise from the clipped x0, use_clipped_model_output); the student's target is the
x0 from which one DDIM step lands on x_prev,
    x0* = (x_prev - (s_prev / s_t) x_t) / (a_prev^0.5 - (s_prev / s_t) a_t^0.5),   s = (1 - a)^0.5,
and its loss is max(SNR_t, 1) |x0_hat - x0*|^2 (the paper's truncated SNR weighting) with x0_hat from
its v prediction. The stage is a function of the step, so --resume continues exactly.
"""
from __future__ import annotations

import torch

from genfast.ops import ddim_step, randn
from genfast.training.data import to_signed


def ddim_x0_target(x_t: torch.Tensor, x_prev: torch.Tensor, a_t: torch.Tensor, a_prev: torch.Tensor) -> torch.Tensor:
    """The x0 from which one deterministic DDIM step x_t (cumulative alpha a_t) -> a_prev lands on x_prev.
    a_t, a_prev: [B] tensors (or floats)."""
    view = (x_t.shape[0],) + (1,) * (x_t.dim() - 1)
    a_t = torch.as_tensor(a_t, dtype=x_t.dtype, device=x_t.device).expand(x_t.shape[0]).reshape(view)
    a_prev = torch.as_tensor(a_prev, dtype=x_t.dtype, device=x_t.device).expand(x_t.shape[0]).reshape(view)
    ratio = (1 - a_prev).clamp_min(0).sqrt() / (1 - a_t).sqrt()
    return (x_prev - ratio * x_t) / (a_prev.sqrt() - ratio * a_t.sqrt())


class DistillTrainer:
    default_lr = 2e-4

    def __init__(self, nets, config, lr, ddp):
        from genfast.samplers import NoiseSchedule
        from genfast.training.zoo import load_model

        self.student, self.teacher = nets["student"], nets["teacher"]
        teacher = load_model("ddpm", config["teacher"], "cpu")  # None: the embedded DDPM
        device = next(self.student.parameters()).device
        self.student.load_state_dict(teacher.net.state_dict())
        self.teacher.load_state_dict(teacher.net.state_dict())
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.model = ddp(self.student)
        self.lr = lr or self.default_lr
        self.opt = self._optimizer()
        self.config = config
        self.stages = list(config["stages"])
        self.stage_steps = int(config["stage_steps"])
        self.schedule = NoiseSchedule.from_config(**config["schedule"])
        self.teacher_schedule = NoiseSchedule.from_config(**config["teacher_schedule"])
        self.device = device
        self.step_count = 0

    def _optimizer(self):
        return torch.optim.Adam(self.student.parameters(), lr=self.lr)

    def optimizers(self):
        return {"opt": self.opt}

    def networks(self):
        return {"student": self.student, "teacher": self.teacher}

    def sampling_state(self):
        return self.student.state_dict()

    def stage_at(self, step: int) -> int:
        return min(step // self.stage_steps, len(self.stages) - 1)

    def extra_meta(self) -> dict:
        """The step count the current student samples with (what its checkpoint says it is)."""
        step = max(self.step_count - 1, 0)  # the student of the last finished step
        return {"student_steps": self.stages[self.stage_at(step)]}

    def finished_stage(self) -> int | None:
        """After a step: the student steps of the stage that step completed, else None."""
        if self.step_count % self.stage_steps == 0 and self.step_count // self.stage_steps <= len(self.stages):
            return self.stages[self.step_count // self.stage_steps - 1]
        return None

    def _teacher_eps_model(self, x, t, y, guided: bool):
        """The teacher's output on x at t: (uncond, cond) for the guided first stage, else one tensor."""
        if not guided:
            return self.teacher(x, t, **({} if y is None else {"class_labels": y}))
        null = torch.full_like(y, self.teacher.num_classes)
        out = self.teacher(torch.cat([x, x]), torch.cat([t, t]), class_labels=torch.cat([null, y]))
        return tuple(out.chunk(2))

    def train_step(self, source) -> dict:
        k = self.stage_at(self.step_count)
        if k > 0 and self.step_count == k * self.stage_steps:  # a new stage: the last student teaches
            self.teacher.load_state_dict(self.student.state_dict())
            self.opt = self._optimizer()
        n = self.stages[k]
        first = k == 0
        teacher_schedule = self.teacher_schedule if first else self.schedule
        tconfig = self.config["teacher_schedule"] if first else self.config["schedule"]
        guidance = self.config["teacher_guidance"] if first else None
        table = self.schedule.table("ddim", n, self.device)
        fine = teacher_schedule.table("ddim", 2 * n, self.device)

        x, y = source.next()
        x0 = to_signed(x)
        b = x0.shape[0]
        if self.student.num_classes is None:
            y = None
        i = torch.randint(0, n, (b,), device=x0.device)
        t, a_t, a_prev = table.timesteps[i], table.alpha_prod_t[i], table.alpha_prod_t_prev[i]
        t_mid, a_mid = fine.timesteps[2 * i + 1], fine.alpha_prod_t[2 * i + 1]
        view = (b,) + (1,) * (x0.dim() - 1)
        eps = randn(x0.shape, device=x0.device)
        x_t = a_t.sqrt().view(view) * x0 + (1 - a_t).sqrt().view(view) * eps

        step_kw = {"prediction_type": tconfig.get("prediction_type", "epsilon")}
        if tconfig.get("clip_sample", False):
            # the noise recomputed from the clipped x0: each teacher step is then an exact DDIM step with that
            # x0, and the student's target below is a convex combination of the two clipped x0 (in [-1, 1]);
            # with the model's own noise the implied target reached |x0| ~ 14 at mid noise levels
            step_kw.update(clip_sample_range=float(tconfig.get("clip_sample_range", 1.0)), use_clipped_model_output=True)
        with torch.no_grad():
            guided = guidance is not None and y is not None
            out = self._teacher_eps_model(x_t, t, y, guided)
            x_mid = ddim_step(x_t, out, a_t, a_mid, guidance_scale=guidance if guided else None, **step_kw)
            out = self._teacher_eps_model(x_mid, t_mid, y, guided)
            x_prev = ddim_step(x_mid, out, a_mid, a_prev, guidance_scale=guidance if guided else None, **step_kw)
            target = ddim_x0_target(x_t, x_prev, a_t, a_prev)
            weight = (a_t / (1 - a_t)).clamp_min(1.0).view(view)

        v = self.model(x_t, t, **({} if y is None else {"class_labels": y}))
        x0_hat = a_t.sqrt().view(view) * x_t - (1 - a_t).sqrt().view(view) * v
        loss = (weight * (x0_hat - target).square()).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.student.parameters(), 1.0)
        self.opt.step()
        self.step_count += 1
        return {"loss": loss.detach(), "student_steps": torch.tensor(float(n))}
