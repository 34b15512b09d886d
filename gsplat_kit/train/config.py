"""Training configuration: one dataclass, resolved once and written to OUT/config.json."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields


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
    keep_ckpts: int = 3                # older periodic checkpoints are deleted
    resume: str | None = None          # checkpoint path, or "auto" for the latest in OUT/ckpts
    eval: bool = True                  # evaluate held-out views after training
    lpips_weights: str | None = None   # folder with LPIPS weights (see gsplat_kit.train.metrics)
    viewer: bool = False
    viewer_port: int = 8080
    progress: bool = True              # tqdm bar

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k != "resolved"}   # OUT/config.json's machine-specific part
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_json(cls, path: str) -> "TrainConfig":
        with open(path) as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d)

    def validate(self):
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.data_factor < 1:
            raise ValueError(f"data_factor must be >= 1, got {self.data_factor}")
        if not 0 <= self.sh_degree <= 3:
            raise ValueError(f"sh_degree must be in 0..3, got {self.sh_degree}")
        if not 0.0 < self.init_opacity < 1.0:
            raise ValueError(f"init_opacity must be in (0, 1), got {self.init_opacity}")
        if not 0.0 <= self.ssim_lambda <= 1.0:
            raise ValueError(f"ssim_lambda must be in [0, 1], got {self.ssim_lambda}")
        from gsplat_kit.train.strategy import STRATEGIES

        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {sorted(STRATEGIES)}, got {self.strategy!r}")
        cls = STRATEGIES[self.strategy]
        known = {f.name for f in fields(cls)}
        bad = sorted(set(self.strategy_options) - known)
        if bad:
            raise ValueError(f"unknown options {bad} for strategy {self.strategy!r}; known: {sorted(known)}")
        return self
