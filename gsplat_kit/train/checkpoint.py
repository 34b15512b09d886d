"""Checkpoints: everything needed to continue training bit for bit (parameters, Adam moments, the
strategy's running statistics, every RNG), written atomically."""
from __future__ import annotations

import glob
import os
import random
import re
import tempfile

import numpy as np
import torch

CKPT_DIR = "ckpts"
_PAT = re.compile(r"ckpt_(\d+)\.pt$")


def atomic_torch_save(obj, path: str):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def rng_state() -> dict:
    s = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict):
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def save_checkpoint(path: str, *, step: int, splats: dict, optimizers: dict, strategy_state: dict,
                    sampler_state: dict, config: dict, elapsed: float):
    """`step` is the number of completed steps: training continues at this step index."""
    atomic_torch_save({
        "step": step,
        "splats": {k: v.detach().cpu() for k, v in splats.items()},
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "strategy_state": {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in strategy_state.items()},
        "sampler": sampler_state,
        "rng": rng_state(),
        "config": config,
        "elapsed": elapsed,
    }, path)


def load_checkpoint(path: str, map_location="cpu") -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise ValueError(f"{path}: not a readable checkpoint ({e})") from None
    if not isinstance(ck, dict) or "splats" not in ck:
        raise ValueError(f"{path}: not a gsplat_kit checkpoint (no 'splats')")
    return ck


def checkpoint_path(out: str, step: int) -> str:
    return os.path.join(out, CKPT_DIR, f"ckpt_{step:06d}.pt")


def list_checkpoints(out: str) -> list[str]:
    found = [(int(m.group(1)), p) for p in glob.glob(os.path.join(out, CKPT_DIR, "ckpt_*.pt"))
             if (m := _PAT.search(p))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out: str) -> str | None:
    cks = list_checkpoints(out)
    return cks[-1] if cks else None


def prune_checkpoints(out: str, keep: int):
    if keep <= 0:
        return
    for p in list_checkpoints(out)[:-keep]:
        os.remove(p)
