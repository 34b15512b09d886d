"""Training configuration: one dataclass, resolved once and written to OUT/config.json.

Every field is type- and range-checked when the config is made (`from_dict` / `validate`), so a bad
value is refused before any data is loaded, naming the field (or the command-line flag that set it).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields

from gsplat_kit.common.errors import UserError
from gsplat_kit.common.options import check_range, coerce_field

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass
class TrainConfig:
    data: str = ""                     # COLMAP folder (images/ + sparse/0) or NeRF-synthetic folder
    out: str = ""                      # output folder
    data_factor: int = 1               # image downscale factor (images_N/ when present)
    test_every: int = 8                # hold out every Nth image (3DGS convention); 0 = none
    white_background: bool = False     # NeRF-synthetic scenes: composite RGBA on white
    steps: int = 30_000
    seed: int = 0
    device: str = "auto"               # auto | cpu | cuda | cuda:N
    num_threads: int = 0               # CPU threads; 0 = the cores not already busy (1-minute load average)

    # Initialisation from the SfM points (3DGS Sec. 5.1)
    init_opacity: float = 0.1
    init_scale: float = 1.0            # multiplies the mean distance to the 3 nearest neighbours

    # Adam, per-parameter learning rates of 3DGS (means scaled by the scene extent, decayed x0.01)
    means_lr: float = 1.6e-4
    means_lr_final_factor: float = 0.01
    scales_lr: float = 5e-3
    quats_lr: float = 1e-3
    opacities_lr: float = 5e-2
    sh0_lr: float = 2.5e-3
    shN_lr: float = 2.5e-3 / 20

    sh_degree: int = 3
    sh_degree_interval: int = 1000     # one more SH band every this many steps
    ssim_lambda: float = 0.2
    random_background: bool = False    # render on a random colour each step (regularises opacity)
    near_plane: float = 0.01
    far_plane: float = 1e10
    antialiased: bool = False          # Mip-Splatting's opacity compensation

    strategy: str = "default"          # default (3DGS ADC) | mcmc
    strategy_options: dict = field(default_factory=dict)   # overrides of the strategy's fields

    ckpt_every: int = 5000             # 0 = only the final checkpoint
    keep_ckpts: int = 3                # older periodic checkpoints are deleted; 0 = keep all
    resume: str | None = None          # checkpoint path, or "auto" for the latest in OUT/ckpts
    eval: bool = True                  # evaluate held-out views after training
    lpips_weights: str | None = None   # folder with LPIPS weights (see gsplat_kit.train.metrics)
    viewer: bool = False
    viewer_port: int = 8080
    progress: bool = True              # tqdm bar

    def to_dict(self) -> dict:
        return asdict(self)

    def resumes_in_place(self) -> bool:
        """Whether this continues the run in `out` (resume "auto", or a checkpoint inside `out`) rather than
        starting a new run there from another run's checkpoint."""
        if not self.resume or not self.out:
            return False
        if self.resume == "auto":
            return True
        return os.path.realpath(self.resume).startswith(os.path.realpath(self.out) + os.sep)

    @classmethod
    def from_dict(cls, d: dict, where: str = "config", names: dict | None = None) -> "TrainConfig":
        """Fields checked by type (unknown keys and wrong types are UserErrors naming `where` and the key;
        `names` maps a field to what set it instead, e.g. "--steps")."""
        if not isinstance(d, dict):
            raise UserError(f"{where}: expected a JSON object of config fields, got {type(d).__name__}")
        d = {k: v for k, v in d.items() if k != "resolved"}   # OUT/config.json's machine-specific part
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"{where}: unknown config keys {unknown}; known keys: {sorted(known)}")
        names = names or {}
        return cls(**{k: coerce_field(cls, k, v, names.get(k, f"{where} {k}")) for k, v in d.items()})

    @classmethod
    def from_json(cls, path: str) -> "TrainConfig":
        with open(path) as f:
            try:
                d = json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise UserError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d, where=path)

    def validate(self, names: dict | None = None) -> "TrainConfig":
        """Range checks of every field (and the strategy's options); `names` maps a field to how the user
        set it (e.g. "--steps", "--config cfg.json: steps"), so that the error names that."""
        names = names or {}
        for f, bounds in FIELD_RANGES.items():
            check_range(names.get(f, f"config field {f}"), getattr(self, f), **bounds)
        if not self.far_plane > self.near_plane:
            raise UserError(f"far_plane ({self.far_plane}) must be greater than near_plane ({self.near_plane})")
        if not DEVICE_PATTERN.match(self.device):
            raise UserError(f"{names.get('device', 'config field device')} {self.device!r}: expected auto, cpu, "
                            f"cuda or cuda:N")
        from gsplat_kit.train.strategy import STRATEGIES, make_strategy   # the strategies import torch

        if self.strategy not in STRATEGIES:
            raise UserError(f"strategy must be one of {sorted(STRATEGIES)}, got {self.strategy!r}")
        known = {f.name for f in fields(STRATEGIES[self.strategy])}
        bad = sorted(set(self.strategy_options) - known)
        if bad:
            raise UserError(f"unknown options {bad} for strategy {self.strategy!r}; known: {sorted(known)}")
        strategy = make_strategy(self.strategy, names.get("strategy_options", "strategy option"), **self.strategy_options)
        self.strategy_options = {k: getattr(strategy, k) for k in self.strategy_options}   # as converted
        return self


# check_range bounds of every numeric field
FIELD_RANGES = {
    "data_factor": dict(lo=1, hi=64), "test_every": dict(lo=0), "steps": dict(lo=1),
    "seed": dict(lo=0, hi=2 ** 32 - 1), "num_threads": dict(lo=0, hi=4096),
    "init_opacity": dict(lo=0.0, hi=1.0, lo_open=True, hi_open=True), "init_scale": dict(lo=0.0, lo_open=True),
    "means_lr": dict(lo=0.0, lo_open=True), "means_lr_final_factor": dict(lo=0.0, lo_open=True),
    "scales_lr": dict(lo=0.0), "quats_lr": dict(lo=0.0), "opacities_lr": dict(lo=0.0), "sh0_lr": dict(lo=0.0),
    "shN_lr": dict(lo=0.0), "sh_degree": dict(lo=0, hi=3), "sh_degree_interval": dict(lo=1),
    "ssim_lambda": dict(lo=0.0, hi=1.0), "near_plane": dict(lo=0.0, lo_open=True), "far_plane": dict(lo=0.0, lo_open=True),
    "ckpt_every": dict(lo=0), "keep_ckpts": dict(lo=0), "viewer_port": dict(lo=0, hi=65535),
}
