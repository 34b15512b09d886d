"""The registry of synthesis methods: a name on the command line -> its config and its batch inverter."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from gsplat_kit.common.errors import UserError
from gsplat_kit.common.options import coerce_fields

from . import deepinversion, naturalinversion
from .inversion import InversionConfig


@dataclass(frozen=True)
class Method:
    name: str
    config: type[InversionConfig]
    invert_batch: Callable   # (teacher, targets, config, seed, progress=False) -> (images in [0,1], log)


METHODS = {
    "deep": Method("deep", deepinversion.DeepInversionConfig, deepinversion.invert_batch),
    "natural": Method("natural", naturalinversion.NaturalInversionConfig, naturalinversion.invert_batch),
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]


def make_config(method: str, batch_size=None, iterations=None, **overrides) -> InversionConfig:
    """The method's default config (its paper's CIFAR-10 settings) with the given fields replaced; unknown
    fields, wrong types and out-of-range values are UserErrors naming the field."""
    cls = get_method(method).config
    upd = dict(overrides)
    if batch_size is not None:
        upd["batch_size"] = batch_size
    if iterations is not None:
        upd["iterations"] = iterations
    upd = coerce_fields(cls, upd, cls.__name__)
    return dataclasses.replace(cls(), **upd).check(cls.__name__)
