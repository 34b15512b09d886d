"""CIFAR-10 from the class-folder JPEGs, decoded once and cached as uint8 .npy arrays."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gsplat_kit.common.atomic import atomic_write
from gsplat_kit.common.errors import UserError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def default_root() -> Path:
    """`../shared/data/cifar10` beside the checkout (CI and this machine), or $GSPLAT_KIT_CIFAR10."""
    env = os.environ.get("GSPLAT_KIT_CIFAR10")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10"


def cache_dir() -> Path:
    return Path(os.environ.get("GSPLAT_KIT_CACHE", Path.home() / ".cache" / "gsplat_kit")) / "cifar10"


def _atomic_save(path: Path, arr: np.ndarray) -> None:
    with atomic_write(path, "wb") as f:
        np.save(f, arr)


def list_classes(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir())


def load_image_folder(folder, size: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode `folder/<class>/*.{jpg,png}` into uint8 [N,H,W,3] and int64 labels (classes sorted by name)."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(2, "image folder not found", str(folder))
    classes = list_classes(folder)
    if not classes:
        raise UserError(f"{folder}: no class sub-folders")
    xs, ys = [], []
    for ci, c in enumerate(classes):
        for p in sorted((folder / c).iterdir()):
            if p.suffix.lower() not in (".jpg", ".jpeg", ".png"):
                continue
            img = Image.open(p).convert("RGB")
            if size is not None and img.size != (size, size):
                raise UserError(f"{p}: image is {img.size[0]}x{img.size[1]}, expected {size}x{size}")
            xs.append(np.asarray(img, dtype=np.uint8))
            ys.append(ci)
    if not xs:
        raise UserError(f"{folder}: no images")
    shapes = {x.shape for x in xs}
    if len(shapes) != 1:
        raise UserError(f"{folder}: images of different sizes {sorted(shapes)[:4]}")
    return np.stack(xs), np.asarray(ys, dtype=np.int64), classes


def load_cifar10(split: str = "train", root=None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """uint8 images [N,32,32,3] and labels [N]; the first call decodes the JPEGs and caches them."""
    if split not in ("train", "test"):
        raise UserError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root) if root else default_root()
    src = root / split
    if not src.is_dir():
        raise FileNotFoundError(2, "CIFAR-10 split not found (expected <root>/<split>/<class>/*.jpg)", str(src))
    classes = list_classes(src)
    cx, cy = cache_dir() / f"{split}_x.npy", cache_dir() / f"{split}_y.npy"
    if cx.exists() and cy.exists():
        x, y = np.load(cx), np.load(cy)
        if len(x) == len(y):
            return x, y, classes
    x, y, classes = load_image_folder(src, size=32)
    _atomic_save(cx, x)
    _atomic_save(cy, y)
    return x, y, classes


def subset_per_class(x: np.ndarray, y: np.ndarray, per_class: int, seed: int = 0):
    """The first `per_class` images of each class after a seeded shuffle (balanced, deterministic)."""
    rng = np.random.default_rng(seed)
    idx = []
    for c in np.unique(y):
        ci = np.flatnonzero(y == c)
        idx.append(rng.permutation(ci)[:per_class])
    idx = np.sort(np.concatenate(idx))
    return x[idx], y[idx]


def to_tensor(x: np.ndarray):
    """uint8 [N,H,W,3] -> float [N,3,H,W] in [0,1]."""
    import torch

    return torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255.0)
