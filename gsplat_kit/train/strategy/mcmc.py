"""3D Gaussian Splatting as Markov Chain Monte Carlo (Kheradmand et al. 2024): densification as
relocation of dead Gaussians plus SGLD noise on positions, with a cap on the count."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from gsplat_kit.train import ops
from gsplat_kit.train.strategy.base import Strategy


@dataclass
class MCMCStrategy(Strategy):
    name = "mcmc"
    RANGES = {"cap_max": dict(lo=1), "noise_lr": dict(lo=0.0), "refine_start_iter": dict(lo=0),
              "refine_stop_iter": dict(lo=0), "refine_every": dict(lo=1), "min_opacity": dict(lo=0.0, hi=1.0, hi_open=True),
              "grow_factor": dict(lo=1.0), "opacity_reg": dict(lo=0.0), "scale_reg": dict(lo=0.0)}
    cap_max: int = 1_000_000          # never grow beyond this many Gaussians
    noise_lr: float = 5e5             # position noise = lr(means) * noise_lr, shaped by each covariance
    refine_start_iter: int = 500
    refine_stop_iter: int = 25_000
    refine_every: int = 100
    min_opacity: float = 0.005        # Gaussians at or below this opacity are dead and get relocated
    grow_factor: float = 1.05         # add 5% per refinement until the cap
    opacity_reg: float = 0.01         # L1 on opacities and scales (the paper's regularisers; the trainer adds them)
    scale_reg: float = 0.01

    def initialize_state(self, scene_scale: float = 1.0) -> dict:
        return {"binoms": ops.binomial_table(51)}

    def step_post_backward(self, params, optimizers, state, step, info, lr=0.0):
        stats = {}
        if self.refine_start_iter < step < self.refine_stop_iter and step % self.refine_every == 0:
            binoms = state["binoms"]
            dead = torch.sigmoid(params["opacities"]) <= self.min_opacity
            stats["relocated"] = ops.relocate(params, optimizers, {}, dead, binoms, self.min_opacity) if dead.any() else 0
            n = len(params["means"])
            n_add = max(0, min(self.cap_max, int(self.grow_factor * n)) - n)
            stats["added"] = ops.sample_add(params, optimizers, {}, n_add, binoms, self.min_opacity) if n_add else 0
        ops.inject_noise(params, scaler=lr * self.noise_lr)
        return stats

    def regularization(self, params) -> torch.Tensor:
        return (self.opacity_reg * torch.sigmoid(params["opacities"]).abs().mean()
                + self.scale_reg * torch.exp(params["scales"]).abs().mean())
