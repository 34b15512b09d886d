"""Densification strategies: each is an object the trainer calls around backward (gsplat's hooks)."""
from gsplat_kit.train.strategy.base import Strategy
from gsplat_kit.train.strategy.default import DefaultStrategy
from gsplat_kit.train.strategy.mcmc import MCMCStrategy

STRATEGIES = {"default": DefaultStrategy, "mcmc": MCMCStrategy}


def make_strategy(name: str, **overrides) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    return STRATEGIES[name](**overrides)


__all__ = ["Strategy", "DefaultStrategy", "MCMCStrategy", "STRATEGIES", "make_strategy"]
