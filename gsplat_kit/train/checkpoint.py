"""Checkpoints: everything needed to continue training bit for bit (parameters, Adam moments, the
strategy's running statistics, every RNG), written atomically.

A checkpoint is data only: tensors, numbers, strings and plain containers (the numpy and Python RNG
states are converted to those), so it loads with `weights_only=True` and a checkpoint handed in by
someone else can never run code. `load_checkpoint` checks its structure and names the file in every
error, so a damaged file is refused when it is opened, not at some later step.
"""
from __future__ import annotations

import hashlib
import math
import os
import random

import numpy as np
import torch

from gsplat_kit.common.atomic import atomic_write
from gsplat_kit.common.errors import UserError
from gsplat_kit.common.safe_load import load_torch_data
from gsplat_kit.scene import splats as layout
from gsplat_kit.scene.splats import SPLAT_KEYS, Splats

CKPT_DIR = layout.CKPT_DIR
ADAM_MOMENTS = ("exp_avg", "exp_avg_sq")


class CheckpointError(UserError):
    """A checkpoint that cannot be used to continue training; the message names the file."""


def atomic_torch_save(obj, path: str):
    with atomic_write(path) as f:   # a file object: the archive's inner folder is not named after the temp file
        torch.save(obj, f)


def content_digest(obj) -> str:
    """SHA-256 over a checkpoint's content (keys, numbers, strings, tensors' dtypes, shapes and bytes) in a
    fixed order. torch's zip format has no checksum of its own, so without this a flipped bit in a moment
    or an RNG state would load silently and resume would no longer continue the run it claims to."""
    h = hashlib.sha256()

    def walk(x):
        if isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=repr):
                h.update(repr(k).encode())
                walk(x[k])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[" if isinstance(x, list) else b"(")
            for v in x:
                walk(v)
            h.update(b"]")
        elif isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(f"{type(x).__name__}:{x!r};".encode())

    walk(obj)
    return h.hexdigest()


# ---- RNG states as plain data ---------------------------------------------------------------------

def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, mt, gauss = random.getstate()
    s = {"torch": torch.get_rng_state(),
         "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
         "python": {"version": int(version), "state": list(mt), "gauss": gauss}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict, where: str = "checkpoint"):
    try:
        torch.set_rng_state(s["torch"])
        n = s["numpy"]
        keys = n["keys"]
        if not isinstance(keys, torch.Tensor) or keys.dtype != torch.int64 or keys.shape != (624,):
            raise TypeError("numpy keys are not MT19937's 624 integers")
        np.random.set_state((n["kind"], keys.numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
        p = s["python"]
        random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
        if "cuda" in s and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(s["cuda"])
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise CheckpointError(f"{where}: unusable random-number-generator state ({type(e).__name__}: {e})") from None


# ---- save / load -----------------------------------------------------------------------------------

def save_checkpoint(path: str, *, step: int, splats: dict, optimizers: dict, strategy_state: dict,
                    sampler_state: dict, config: dict, elapsed: float):
    """`step` is the number of completed steps: training continues at this step index."""
    ck = {
        "step": int(step),
        "splats": {k: v.detach().cpu() for k, v in splats.items()},
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "strategy_state": {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in strategy_state.items()},
        "sampler": sampler_state,
        "rng": rng_state(),
        "config": config,
        "elapsed": float(elapsed),
    }
    ck["digest"] = content_digest(ck)
    atomic_torch_save(ck, path)


def _require(ok: bool, path: str, what: str):
    if not ok:
        raise CheckpointError(f"{path}: {what}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_optimizer(path: str, name: str, sd, param: torch.Tensor):
    where = f"optimizer state of '{name}'"
    _require(isinstance(sd, dict) and isinstance(sd.get("state"), dict), path, f"{where} is not a state dict")
    _require(set(sd["state"]) <= {0}, path, f"{where} holds more than the one parameter")
    st = sd["state"].get(0)
    if st is None:          # saved before the first step
        return
    _require(isinstance(st, dict) and set(ADAM_MOMENTS) | {"step"} <= set(st), path,
             f"{where} lacks Adam's step and moments")
    step = st["step"]
    _require(isinstance(step, torch.Tensor) and step.numel() == 1 and step.is_floating_point()
             and bool(torch.isfinite(step).all()) and float(step) >= 0, path, f"{where}: step is not a count")
    for m in ADAM_MOMENTS:
        t = st[m]
        _require(isinstance(t, torch.Tensor) and tuple(t.shape) == tuple(param.shape) and t.dtype == param.dtype,
                 path, f"{where}: {m} has shape {list(getattr(t, 'shape', []))}, the parameter {list(param.shape)}")
        _require(bool(torch.isfinite(t).all()), path, f"{where}: {m} holds NaN or inf values")
    _require(bool((st["exp_avg_sq"] >= 0).all()), path, f"{where}: exp_avg_sq holds negative values")


def _check_sampler(path: str, s):
    _require(isinstance(s, dict) and {"gen", "perm", "pos", "n"} <= set(s), path, "view sampler state is incomplete")
    gen, perm, pos, n = s["gen"], s["perm"], s["pos"], s["n"]
    ref = torch.Generator().get_state()
    _require(isinstance(gen, torch.Tensor) and gen.dtype == ref.dtype and gen.shape == ref.shape, path,
             "view sampler: not a random generator state")
    _require(_is_int(n) and n >= 1, path, f"view sampler: view count {n!r} is not a positive integer")
    _require(isinstance(perm, list) and all(_is_int(i) and 0 <= i < n for i in perm), path,
             "view sampler: the view order is not a list of view indices")
    _require(_is_int(pos) and 0 <= pos <= len(perm), path, f"view sampler: position {pos!r} is outside the order")


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """A training checkpoint, loaded as data and checked: its splats (validated as `Splats`), one Adam state
    per parameter with moments of the parameter's shape, the sampler and RNG states, the config."""
    path = os.fspath(path)
    ck = load_torch_data(path, "checkpoint", map_location=map_location)
    _require(isinstance(ck, dict), path, f"expected a dict checkpoint, got {type(ck).__name__}")
    missing = [k for k in ("step", "splats", "optimizers", "strategy_state", "sampler", "rng", "config")
               if k not in ck]
    _require(not missing, path, f"not a gsplat_kit training checkpoint (missing {missing})")
    digest = ck.pop("digest", None)
    _require(isinstance(digest, str), path, "no content digest (not written by this version of gsplat_kit)")
    _require(digest == content_digest(ck), path, "the content does not match its digest (the file is damaged)")
    _require(_is_int(ck["step"]) and ck["step"] >= 0, path, f"step {ck['step']!r} is not a non-negative integer")
    _require(isinstance(ck["splats"], dict) and set(ck["splats"]) == set(SPLAT_KEYS), path,
             f"splats must hold exactly {list(SPLAT_KEYS)}")
    _require(all(isinstance(v, torch.Tensor) and v.dtype == torch.float32 for v in ck["splats"].values()), path,
             "splats are not float32 tensors")
    ck["splats"] = Splats.checked(ck["splats"], path).as_dict()
    _require(isinstance(ck["optimizers"], dict) and set(ck["optimizers"]) == set(SPLAT_KEYS), path,
             f"optimizers must hold one state per parameter {list(SPLAT_KEYS)}")
    for k in SPLAT_KEYS:
        _check_optimizer(path, k, ck["optimizers"][k], ck["splats"][k])
    _require(isinstance(ck["strategy_state"], dict), path, "strategy state is not a dict")
    _check_sampler(path, ck["sampler"])
    _require(isinstance(ck["rng"], dict) and {"torch", "numpy", "python"} <= set(ck["rng"]), path,
             "random-number-generator states are incomplete")
    _require(isinstance(ck["config"], dict) and isinstance(ck["config"].get("strategy"), str), path,
             "config is not a dict naming its strategy")
    elapsed = ck.get("elapsed", 0.0)
    _require(isinstance(elapsed, (int, float)) and math.isfinite(elapsed) and elapsed >= 0, path,
             f"elapsed time {elapsed!r} is not a duration")
    return ck


# ---- the run folder's checkpoints (layout of gsplat_kit.scene.splats) -----------------------------

def checkpoint_path(out: str, step: int) -> str:
    return os.path.join(out, CKPT_DIR, f"ckpt_{step:06d}.pt")


def list_checkpoints(out: str) -> list[str]:
    """The run's checkpoints, oldest step first."""
    return [str(p) for p in layout.list_checkpoints(out)]


def latest_checkpoint(out: str) -> str | None:
    """The checkpoint of the highest step (the same rule as `load_splats` on a run folder)."""
    cks = list_checkpoints(out)
    return cks[-1] if cks else None


def prune_checkpoints(out: str, keep: int):
    if keep <= 0:
        return
    for p in list_checkpoints(out)[:-keep]:
        os.remove(p)
