"""The interface between the trainer and a densification strategy (gsplat's Strategy hooks)."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Strategy:
    """A strategy owns every change to the *number* of Gaussians; the trainer only calls its hooks.

    - `initialize_state(scene_scale)` -> a dict of running statistics (saved in checkpoints);
    - `step_pre_backward(...)` after rendering, before `loss.backward()` (e.g. retain 2D-mean grads);
    - `step_post_backward(...)` after backward and `optimizer.step()` (gsplat order); may edit params and the
      optimizers' state in place through gsplat_kit.train.ops.
    """

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
