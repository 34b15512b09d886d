"""The interface between the trainer and a densification strategy (gsplat's Strategy hooks)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch

from gsplat_kit.common.errors import UserError
from gsplat_kit.common.options import check_range


@dataclass
class Strategy:
    """A strategy owns every change to the *number* of Gaussians; the trainer only calls its hooks.

    - `initialize_state(scene_scale)` -> a dict of running statistics (saved in checkpoints);
    - `step_pre_backward(...)` after rendering, before `loss.backward()` (e.g. retain 2D-mean grads);
    - `step_post_backward(...)` after backward and `optimizer.step()` (gsplat order); may edit params and the
      optimizers' state in place through gsplat_kit.train.ops.

    `RANGES` maps a field to its `check_range` bounds; `checked()` applies them when options are parsed.
    """
    RANGES: ClassVar[dict] = {}

    def checked(self, where: str = "strategy option") -> "Strategy":
        for name, bounds in self.RANGES.items():
            check_range(f"{where} {name}", getattr(self, name), **bounds)
        return self

    def check_state(self, state: dict, num: int, where: str):
        """Refuses (UserError naming `where`) a saved state that this strategy could not continue from:
        other keys than its fresh state's, or per-Gaussian statistics of another length than `num`."""
        fresh = self.initialize_state()
        if set(state) != set(fresh):
            raise UserError(f"{where}: strategy state has keys {sorted(state)}, {self.name} keeps {sorted(fresh)}")
        for k, v in state.items():
            ref = fresh[k]
            if isinstance(ref, torch.Tensor):
                ok = isinstance(v, torch.Tensor) and v.shape == ref.shape and v.dtype == ref.dtype
            elif isinstance(ref, float):
                ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0  # a scale
            else:   # per-Gaussian statistics, made at the first step
                ok = v is None or (isinstance(v, torch.Tensor) and v.shape == (num,) and v.is_floating_point())
            if not ok or (isinstance(v, torch.Tensor) and not bool(torch.isfinite(v).all())):
                raise UserError(f"{where}: strategy state '{k}' is not what {self.name} keeps")

    def initialize_state(self, scene_scale: float = 1.0) -> dict:
        return {}

    def step_pre_backward(self, params: dict, optimizers: dict, state: dict, step: int, info: dict):
        pass

    def step_post_backward(self, params: dict, optimizers: dict, state: dict, step: int, info: dict,
                           lr: float = 0.0) -> dict:
        return {}

    def check_sanity(self, params: dict, optimizers: dict):
        for name in ("means", "scales", "quats", "opacities"):
            if name not in params:
                raise ValueError(f"{type(self).__name__} needs a '{name}' parameter; got {sorted(params)}")
        n = len(params["means"])
        for name, p in params.items():
            if len(p) != n:
                raise ValueError(f"parameter '{name}' has {len(p)} rows but means has {n}")
        for name, opt in optimizers.items():
            if len(opt.param_groups) != 1 or len(opt.param_groups[0]["params"]) != 1:
                raise ValueError(f"optimizer '{name}' must hold exactly one parameter (one per attribute)")

    def to_dict(self) -> dict:
        return {"name": self.name, **asdict(self)}
