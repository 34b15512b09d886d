"""Adaptive density control of 3DGS (Kerbl et al. 2023, Sec. 5.2) with gsplat's defaults."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from gsplat_kit.train import ops
from gsplat_kit.train.strategy.base import Strategy


@dataclass
class DefaultStrategy(Strategy):
    """Clone small / split large Gaussians whose mean view-space gradient exceeds `grow_grad2d`, prune
    transparent and oversized ones, reset opacities periodically.

    Gradients are the per-pixel-normalised norms of d loss / d means2d, accumulated over the views that
    see each Gaussian (gsplat's convention: grad * [W/2, H/2] * n_cameras, so that the threshold 0.0002
    means what it means in the original code, which works in NDC).
    """
    name = "default"
    RANGES = {"prune_opa": dict(lo=0.0, hi=1.0, hi_open=True), "grow_grad2d": dict(lo=0.0),
              "grow_scale3d": dict(lo=0.0, lo_open=True), "prune_scale3d": dict(lo=0.0, lo_open=True),
              "prune_scale2d": dict(lo=0.0, lo_open=True), "split_samples": dict(lo=1, hi=64),
              "split_scale_factor": dict(lo=0.0, lo_open=True), "refine_start_iter": dict(lo=0),
              "refine_stop_iter": dict(lo=0), "refine_every": dict(lo=1), "reset_every": dict(lo=1)}
    prune_opa: float = 0.005          # prune below this opacity
    grow_grad2d: float = 0.0002       # densify above this mean 2D gradient
    grow_scale3d: float = 0.01        # clone if max scale <= this * scene_scale, else split
    prune_scale3d: float = 0.1        # prune if max scale > this * scene_scale (after the first reset)
    prune_scale2d: float = 0.15       # prune if max screen radius > this * max(W, H) (after the first reset)
    split_samples: int = 2
    split_scale_factor: float = 1.6
    refine_start_iter: int = 500
    refine_stop_iter: int = 15_000
    refine_every: int = 100
    reset_every: int = 3000
    absgrad: bool = False             # AbsGS: accumulate |grad| per pixel (use with a higher threshold)
    screen_size_prune: bool = True    # 3DGS's max-screen-size pruning

    def initialize_state(self, scene_scale: float = 1.0) -> dict:
        return {"grad2d": None, "count": None, "radii": None, "scene_scale": float(scene_scale)}

    def step_pre_backward(self, params, optimizers, state, step, info):
        info["means2d"].retain_grad()

    def step_post_backward(self, params, optimizers, state, step, info, lr=0.0):
        stats = {}
        if step >= self.refine_stop_iter:
            return stats
        self._accumulate(params, state, info)
        if step > self.refine_start_iter and step % self.refine_every == 0:
            stats["cloned"], stats["split"] = self._grow(params, optimizers, state)
            stats["pruned"] = self._prune(params, optimizers, state, step)
            for k in ("grad2d", "count", "radii"):
                state[k].zero_()
        if step % self.reset_every == 0 and step > 0:
            ops.reset_opacity(params, optimizers, state, value=self.prune_opa * 2.0)
            stats["reset"] = True
        return stats

    @torch.no_grad()
    def _accumulate(self, params, state, info):
        means2d = info["means2d"]
        grads = means2d.absgrad if self.absgrad else means2d.grad
        if grads is None:
            raise RuntimeError("means2d has no gradient: call step_pre_backward before loss.backward()")
        grads = grads.detach().clone()                                   # [C, N, 2]
        grads[..., 0] *= info["width"] / 2.0 * info["n_cameras"]
        grads[..., 1] *= info["height"] / 2.0 * info["n_cameras"]
        n = len(params["means"])
        for k in ("grad2d", "count", "radii"):
            if state[k] is None:
                state[k] = torch.zeros(n, device=grads.device)
        visible = (info["radii"] > 0).all(dim=-1)                        # [C, N]
        ids = torch.where(visible)[1]
        state["grad2d"].index_add_(0, ids, grads[visible].norm(dim=-1))
        state["count"].index_add_(0, ids, torch.ones_like(ids, dtype=torch.float32))
        radii = info["radii"][visible].max(dim=-1).values.float() / float(max(info["width"], info["height"]))
        state["radii"].scatter_reduce_(0, ids, radii, reduce="amax")

    @torch.no_grad()
    def _grow(self, params, optimizers, state):
        grads = state["grad2d"] / state["count"].clamp_min(1)
        high = grads > self.grow_grad2d
        small = torch.exp(params["scales"]).max(dim=-1).values <= self.grow_scale3d * state["scene_scale"]
        dupli = high & small
        n_dupli = int(dupli.sum())
        if n_dupli:
            ops.duplicate(params, optimizers, state, dupli)
        # the fresh clones are never split in the same round
        splitm = torch.cat([high & ~small, torch.zeros(n_dupli, dtype=torch.bool, device=high.device)])
        n_split = int(splitm.sum())
        if n_split:
            ops.split(params, optimizers, state, splitm, self.split_samples, self.split_scale_factor)
        return n_dupli, n_split

    @torch.no_grad()
    def _prune(self, params, optimizers, state, step):
        prune = torch.sigmoid(params["opacities"]) < self.prune_opa
        if step > self.reset_every:
            prune |= torch.exp(params["scales"]).max(dim=-1).values > self.prune_scale3d * state["scene_scale"]
            if self.screen_size_prune:
                prune |= state["radii"] > self.prune_scale2d
        n = int(prune.sum())
        if n:
            ops.remove(params, optimizers, state, prune)
        return n
