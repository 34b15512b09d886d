"""BatchNorm feature-statistics prior (DeepInversion, Yin et al. CVPR 2020, Eq. 4).

Forward hooks on every BatchNorm layer of a classifier compare the batch mean / variance of the BN's
*input* with the layer's running statistics: R_feature = sum_l w_l (||mu_l(x) - mu_l||_2 +
||var_l(x) - var_l||_2), with w_0 = first_bn_multiplier for the first BN and 1 for the rest.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn


class NoBatchNormError(ValueError):
    """The BN prior needs BatchNorm layers with running statistics."""


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            and m.running_mean is not None]


class BNStatsLoss:
    """Hooks every BN layer of ``model``; after a forward pass, ``loss()`` is the weighted sum of the
    per-layer statistic distances (a differentiable scalar). Use as a context manager or call ``close()``."""

    def __init__(self, model: nn.Module, first_bn_multiplier: float = 1.0):
        layers = batchnorm_layers(model)
        if not layers:
            raise NoBatchNormError(
                f"{type(model).__name__} has no BatchNorm layers with running statistics: the BN "
                "feature-statistics prior (DeepInversion / NaturalInversion) needs them")
        self.weights = [float(first_bn_multiplier)] + [1.0] * (len(layers) - 1)
        self.terms: list[torch.Tensor | None] = [None] * len(layers)
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(layers)]
        self.active = True

    def _hook(self, i):
        def fn(module, inputs, output):
            if not self.active:
                return
            x = inputs[0]
            dims = [0] + list(range(2, x.ndim))          # per channel, over batch and space
            var, mean = torch.var_mean(x, dims, correction=0)   # biased, as the references; one pass
            self.terms[i] = (torch.linalg.vector_norm(module.running_mean.to(x.dtype) - mean)
                             + torch.linalg.vector_norm(module.running_var.to(x.dtype) - var))
        return fn

    @contextlib.contextmanager
    def paused(self):
        """Forward passes in this block leave the terms alone (a pass whose statistics are not part of
        the loss, e.g. NaturalInversion's reading of the teacher's feature maps, need not compute them)."""
        was, self.active = self.active, False
        try:
            yield
        finally:
            self.active = was

    def per_layer(self) -> list[torch.Tensor]:
        if any(t is None for t in self.terms):
            raise RuntimeError("BNStatsLoss.loss() called before a forward pass through the model")
        return list(self.terms)

    def loss(self) -> torch.Tensor:
        return sum(w * t for w, t in zip(self.weights, self.per_layer()))

    def close(self):
        for h in self.handles:
            h.remove()
        self.handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
