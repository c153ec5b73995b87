"""The step outputs of the sigma schedulers: diffusers' own classes when diffusers is installed (so
isinstance checks in pipelines hold), the same fields otherwise."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from genfast.schedulers._common import HAVE_DIFFUSERS, _OutputBase

if HAVE_DIFFUSERS:
    from diffusers.schedulers.scheduling_euler_ancestral_discrete import EulerAncestralDiscreteSchedulerOutput
    from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteSchedulerOutput
    from diffusers.schedulers.scheduling_utils import SchedulerOutput
else:
    @dataclass
    class SchedulerOutput(_OutputBase):
        prev_sample: torch.Tensor

    @dataclass
    class EulerDiscreteSchedulerOutput(_OutputBase):
        prev_sample: torch.Tensor
        pred_original_sample: torch.Tensor | None = None

    @dataclass
    class EulerAncestralDiscreteSchedulerOutput(_OutputBase):
        prev_sample: torch.Tensor
        pred_original_sample: torch.Tensor | None = None
