"""Densification strategies: each is an object the trainer calls around backward (gsplat's hooks)."""
from gsplat_kit.common.errors import UserError
from gsplat_kit.common.options import coerce_fields
from gsplat_kit.train.strategy.base import Strategy
from gsplat_kit.train.strategy.default import DefaultStrategy
from gsplat_kit.train.strategy.mcmc import MCMCStrategy

STRATEGIES = {"default": DefaultStrategy, "mcmc": MCMCStrategy}


def make_strategy(name: str, where: str = "strategy option", **overrides) -> Strategy:
    """The strategy `name` with `overrides` of its fields, type- and range-checked (UserError naming `where`
    and the field)."""
    if name not in STRATEGIES:
        raise UserError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    cls = STRATEGIES[name]
    return cls(**coerce_fields(cls, overrides, f"{where} ({name})")).checked(where)


__all__ = ["Strategy", "DefaultStrategy", "MCMCStrategy", "STRATEGIES", "make_strategy"]
