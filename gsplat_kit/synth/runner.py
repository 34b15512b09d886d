"""Synthesise an image set batch by batch: resumable, deterministic, splittable across processes.

Batch b holds global image indices [b*B, (b+1)*B); image i gets target class i % C (balanced batches)
and batch b is made from the seed `batch_seed(seed, b)` alone, so any process can make any batch and a
re-run makes the same images. Each finished batch is committed atomically (PNGs moved into
`out/<class>/`, then `out/batches/batch_NNNNN.json` written last as the completion mark); a killed run
skips the committed batches and redoes at most the one it was in. With torch.distributed initialised
(or rank/world_size given), rank r takes the batches b with b % world_size == r.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from gsplat_kit.common import atomic
from gsplat_kit.common.errors import UserError
from gsplat_kit.common.paths import safe_name
from gsplat_kit.common.run_folder import MARKER

from .methods import get_method, make_config

SETTINGS = "settings.json"
SUMMARY = "losses.json"


def class_folders(classes) -> list[str]:
    """The folder of each class: its name when that is a safe folder name, else a deterministic mapping
    (`common.paths.safe_name`), so a teacher's class names can never lead outside the output folder."""
    folders = [safe_name(c) for c in classes]
    if len(set(folders)) != len(folders) or set(folders) & {"batches", SETTINGS, SUMMARY, MARKER}:
        raise UserError(f"the teacher's class names {list(classes)[:12]} do not map to distinct folders")
    return folders


def batch_seed(seed: int, b: int) -> int:
    """Independent of the process, the rank and of what ran before: a pure function of (seed, batch)."""
    return (int(seed) * 1_000_003 + int(b) * 7919 + 12345) % (2 ** 31 - 1)


def batch_targets(b: int, batch_size: int, num_images: int, num_classes: int) -> torch.Tensor:
    lo, hi = b * batch_size, min(num_images, (b + 1) * batch_size)
    return torch.arange(lo, hi) % num_classes


def _dist_rank_world(rank, world_size):
    if rank is not None or world_size is not None:
        return int(rank or 0), int(world_size or 1)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _save_png(img: torch.Tensor, path: Path) -> None:
    from PIL import Image

    arr = (img.detach().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy())
    Image.fromarray(np.ascontiguousarray(arr)).save(path)


def _resolve_teacher(teacher, device):
    from .models import load_teacher

    if isinstance(teacher, (str, os.PathLike)):
        model, meta = load_teacher(teacher)
        meta["path"] = str(teacher)
    elif isinstance(teacher, tuple):
        model, meta = teacher
    else:
        model, meta = teacher, {}
    meta = dict(meta)
    meta.setdefault("num_classes", getattr(model, "num_classes", None))
    meta.setdefault("image_size", 32)
    if not meta.get("classes"):
        meta["classes"] = [f"class_{i:03d}" for i in range(int(meta["num_classes"]))]
    return model.to(device).eval(), meta


def _settings(method, cfg, meta, num_images, seed) -> dict:
    return {"method": method, "config": dataclasses.asdict(cfg), "num_images": int(num_images), "seed": int(seed),
            "teacher": {k: meta.get(k) for k in ("path", "arch", "num_classes", "image_size", "test_accuracy")},
            "classes": list(meta["classes"]),
            # a class name that is not a safe folder name (empty, "..", a path) is mapped, never followed
            "class_folders": {c: safe_name(c) for c in meta["classes"]},
            "naming": "<class folder>/<batch:05d>_<index in batch:03d>.png"}


def _check_resume(out: Path, settings: dict) -> None:
    """A folder may only be resumed with the settings it was started with (else the set would mix)."""
    p = out / SETTINGS
    if not p.exists():
        return
    try:
        old = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{p}: unreadable settings of an earlier run ({e}); use a fresh --out") from None
    keys = ("method", "config", "num_images", "seed", "classes")
    diff = [k for k in keys if json.dumps(old.get(k), sort_keys=True) != json.dumps(settings.get(k), sort_keys=True)]
    if diff:
        raise UserError(f"{out} holds a run with different {', '.join(diff)}; resume it with the same "
                         f"settings or choose a fresh --out")


def synthesize(teacher, method: str, num_images: int, out, batch_size: int | None = None,
               iterations: int | None = None, seed: int = 0, device: str = "cpu", progress: bool = True,
               rank: int | None = None, world_size: int | None = None, on_batch_done=None, **overrides) -> dict:
    """Make `num_images` images with NaturalInversion (`method="natural"`) or DeepInversion (`"deep"`).

    teacher: a checkpoint path (see models.load_teacher), a (model, meta) pair or a model.
    out: folder for `<class>/*.png`, `settings.json`, `batches/batch_NNNNN.json` (per-batch losses) and,
    when every batch is done, `losses.json` (the summary, also returned).
    batch_size / iterations / **overrides: fields of the method's config (defaults: the paper's).
    rank / world_size: explicit split; default: torch.distributed's when initialised, else one process.
    on_batch_done(b, log): called after each committed batch (tests use it to interrupt a run).
    """
    if int(num_images) < 1:
        raise UserError(f"num_images must be >= 1, got {num_images}")
    inverter = get_method(method).invert_batch
    cfg = make_config(method, batch_size, iterations, **overrides)
    model, meta = _resolve_teacher(teacher, device)
    size = int(getattr(cfg, "image_size", meta["image_size"]))
    if meta.get("image_size") and int(meta["image_size"]) != size:
        raise UserError(f"image_size {size} differs from the teacher's input size {meta['image_size']}")
    classes = list(meta["classes"])
    if len(classes) != int(meta["num_classes"]):
        raise UserError(f"teacher lists {len(classes)} class names for {meta['num_classes']} outputs")
    folders = class_folders(classes)
    out = Path(out)
    rank, world = _dist_rank_world(rank, world_size)
    settings = _settings(method, cfg, meta, num_images, seed)
    bdir = out / "batches"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        _check_resume(out, settings)
        bdir.mkdir(exist_ok=True)
        for c in folders:
            (out / c).mkdir(exist_ok=True)
        atomic.write_json(out / SETTINGS, settings)
        if world == 1 or _dist_on():  # no other writer can be mid-batch yet: drop a killed run's leftovers
            for t in out.glob(".tmp_batch_*"):
                shutil.rmtree(t, ignore_errors=True)
    _barrier(world)
    if rank != 0:  # (without a process group, rank 0 may not have made the folders yet)
        _check_resume(out, settings)
        bdir.mkdir(parents=True, exist_ok=True)
        for c in folders:
            (out / c).mkdir(exist_ok=True)
    B = cfg.batch_size
    nb = math.ceil(int(num_images) / B)
    mine = [b for b in range(nb) if b % world == rank]
    todo = [b for b in mine if not (bdir / f"batch_{b:05d}.json").exists()]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mine), initial=len(mine) - len(todo), unit="batch", desc=f"{method}inversion"
                   + (f" rank {rank}/{world}" if world > 1 else ""), position=rank if world > 1 else None)
    for b in todo:
        targets = batch_targets(b, B, num_images, len(classes))
        t0 = time.time()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(batch_seed(seed, b))
            images, log = inverter(model, targets.to(device), cfg, batch_seed(seed, b), progress=False)
        seconds = time.time() - t0
        if images.shape[1:] != (3, size, size) or images.shape[0] != len(targets):
            raise RuntimeError(f"{method}: batch {b} came back with shape {tuple(images.shape)}")
        _commit_batch(out, b, images, targets, folders, dict(log, rank=rank), seconds)
        if bar is not None:
            bar.update(1)
            if "loss_final" in log:
                bar.set_postfix(loss=f"{log['loss_final']:.3f}")
        if on_batch_done is not None:
            on_batch_done(b, log)
    if bar is not None:
        bar.close()
    _barrier(world)
    return _summarise(out, nb, settings) if rank == 0 else {"rank": rank, "batches": mine}


def _dist_on() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _barrier(world):
    if world > 1 and _dist_on():
        torch.distributed.barrier()


def _commit_batch(out: Path, b: int, images, targets, folders, log, seconds) -> None:
    tmp = atomic.temp_path(out / f"tmp_batch_{b:05d}")   # .tmp_batch_*: see the clean-up in synthesize
    tmp.mkdir()
    files = []
    for j, (img, t) in enumerate(zip(images, targets.tolist())):
        name = f"{folders[t]}/{b:05d}_{j:03d}.png"
        _save_png(img, tmp / name.replace("/", "__"))
        files.append(name)
    for name in files:  # same folder tree, so os.replace is a rename
        os.replace(tmp / name.replace("/", "__"), out / name)
    tmp.rmdir()
    rec = {"batch": b, "targets": targets.tolist(), "files": files, "seconds": round(seconds, 3)}
    rec.update({k: v for k, v in log.items() if _jsonable(v)})
    atomic.write_json(out / "batches" / f"batch_{b:05d}.json", rec)


def _jsonable(v) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


def _summarise(out: Path, nb: int, settings: dict) -> dict:
    recs = []
    for b in range(nb):
        p = out / "batches" / f"batch_{b:05d}.json"
        if p.exists():
            recs.append(json.loads(p.read_text()))
    done = len(recs) == nb
    summary = {"method": settings["method"], "num_images": settings["num_images"], "batches": nb,
               "batches_done": len(recs), "complete": done,
               "seconds": round(sum(r.get("seconds", 0.0) for r in recs), 2)}
    for key in ("loss_final", "loss_best", "ce", "bn", "teacher_acc"):
        vals = [r[key] for r in recs if isinstance(r.get(key), (int, float))]
        if vals:
            summary[f"mean_{key}"] = float(np.mean(vals))
    summary["per_batch"] = [{k: r.get(k) for k in ("batch", "loss_final", "teacher_acc", "seconds")} for r in recs]
    if done:
        atomic.write_json(out / SUMMARY, summary)
    return summary
