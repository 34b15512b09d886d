"""Densification on a shard of the Gaussians (distributed training).

The default strategy (3DGS's adaptive density control) decides per Gaussian from statistics that
`render_batch` makes complete for the whole batch (each shard's 2D means receive the gradients of every
camera through the exchange), so it runs on a shard unchanged. MCMC's growth is a global quantity (5 %
of all Gaussians, under a global cap): the growth is computed from the gathered shard sizes and shared
out in proportion to them, so N ranks add exactly as many Gaussians as one rank would. Relocation and
position noise are per Gaussian and stay local.
"""
from __future__ import annotations

import torch

from gsplat_kit.common.errors import UserError
from gsplat_kit.train import ops
from gsplat_kit.train.strategy import DefaultStrategy, MCMCStrategy, Strategy


def proportional_shares(total: int, sizes: list[int]) -> list[int]:
    """`total` split in proportion to `sizes` (largest remainders first, ties to the lower rank); sums to total."""
    n = sum(sizes)
    if n == 0 or total <= 0:
        return [0] * len(sizes)
    exact = [total * s / n for s in sizes]
    shares = [int(e) for e in exact]
    order = sorted(range(len(sizes)), key=lambda r: (-(exact[r] - shares[r]), r))
    for r in order[:total - sum(shares)]:
        shares[r] += 1
    return shares


class ShardedStrategy:
    """A strategy's hooks for one rank's shard. `sizes` (the shard sizes of all ranks) is refreshed by the
    trainer every step; `comm` is the trainer's distributed.Comm."""

    def __init__(self, strategy: Strategy, comm):
        if isinstance(strategy, DefaultStrategy) and strategy.absgrad:
            raise UserError("--strategy-opt absgrad=true is not supported with --distributed (the per-pixel "
                            "absolute gradients stay on the rendering rank)")
        if not isinstance(strategy, (DefaultStrategy, MCMCStrategy)):
            raise UserError(f"strategy {strategy.name!r} has no sharded form")
        self.strategy, self.comm = strategy, comm
        self.sizes: list[int] = [0] * comm.world

    def to_dict(self) -> dict:
        return self.strategy.to_dict()

    def initialize_state(self, scene_scale: float = 1.0) -> dict:
        return self.strategy.initialize_state(scene_scale=scene_scale)

    def check_sanity(self, params, optimizers):
        self.strategy.check_sanity(params, optimizers)

    def step_pre_backward(self, params, optimizers, state, step, info):
        self.strategy.step_pre_backward(params, optimizers, state, step, info)

    def step_post_backward(self, params, optimizers, state, step, info, lr=0.0) -> dict:
        if isinstance(self.strategy, MCMCStrategy):
            return self._mcmc_post_backward(params, optimizers, state, step, lr)
        return self.strategy.step_post_backward(params, optimizers, state, step, info, lr=lr)

    def regularization(self, params) -> torch.Tensor | None:
        """The strategy's regulariser as this shard's part of the mean over all Gaussians."""
        reg = getattr(self.strategy, "regularization", None)
        if reg is None or len(params["means"]) == 0:
            return None
        return reg(params) * (len(params["means"]) / max(sum(self.sizes), 1))

    @torch.no_grad()
    def _mcmc_post_backward(self, params, optimizers, state, step, lr):
        s, stats = self.strategy, {}
        if s.refine_start_iter < step < s.refine_stop_iter and step % s.refine_every == 0:
            binoms = state["binoms"]
            dead = torch.sigmoid(params["opacities"]) <= s.min_opacity
            stats["relocated"] = ops.relocate(params, optimizers, {}, dead, binoms, s.min_opacity) if dead.any() else 0
            sizes = self.comm.sizes(len(params["means"]))
            n = sum(sizes)
            n_add = max(0, min(s.cap_max, int(s.grow_factor * n)) - n)
            mine = proportional_shares(n_add, sizes)[self.comm.rank]
            stats["added"] = ops.sample_add(params, optimizers, {}, mine, binoms, s.min_opacity) if mine else 0
        ops.inject_noise(params, scaler=lr * s.noise_lr)
        return stats
