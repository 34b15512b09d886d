"""Held-out evaluation: render each test view, write it next to its ground truth, and score it."""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import torch

from gsplat_kit.train.metrics import image_metrics, load_lpips, lpips_distance
from gsplat_kit.train.rendering import max_sh_degree, render_view


def atomic_write_json(obj, path: str):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".json", dir=folder)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, default=str)
    os.replace(tmp, path)


def atomic_write_png(img: torch.Tensor, path: str):
    from PIL import Image

    arr = (img.detach().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".png", dir=folder)
    os.close(fd)
    Image.fromarray(arr).save(tmp, format="PNG")
    os.replace(tmp, path)


def load_image_tensor(view) -> torch.Tensor:
    """view.load_image() as a float32 [H, W, 3] tensor in [0, 1] (uint8 arrays are rescaled)."""
    img = view.load_image()
    t = torch.as_tensor(np.asarray(img)) if not isinstance(img, torch.Tensor) else img
    t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
    if t.dim() != 3 or t.shape[-1] != 3 or tuple(t.shape[:2]) != (view.height, view.width):
        raise ValueError(f"image of view {view.name}: expected [{view.height}, {view.width}, 3], got {list(t.shape)}")
    return t


def _stem(name: str) -> str:
    return os.path.splitext(os.path.basename(str(name)))[0]


@torch.no_grad()
def evaluate(splats: dict, views, out_dir: str | None = None, background=None, lpips_weights: str | None = None,
             sh_degree: int | None = None, progress: bool = True) -> dict:
    """Scores `views`; with out_dir, writes out_dir/render/<name>.png beside out_dir/gt/<name>.png.

    Returns {"psnr", "ssim", "lpips" (None when its weights are missing), "lpips_note", "per_image", ...}.
    """
    from tqdm import tqdm

    if out_dir:
        os.makedirs(os.path.join(out_dir, "render"), exist_ok=True)
        os.makedirs(os.path.join(out_dir, "gt"), exist_ok=True)
    lp_model, lp_note = load_lpips(lpips_weights)
    dev = splats["means"].device
    if lp_model is not None:
        lp_model = lp_model.to(dev)
    deg = max_sh_degree(splats) if sh_degree is None else sh_degree
    per_image = []
    for i, view in enumerate(tqdm(views, desc="eval", disable=not progress, leave=False)):
        gt = load_image_tensor(view).to(dev)
        img = render_view(splats, view, deg, background)
        m = {"name": str(view.name), **image_metrics(img, gt)}
        if lp_model is not None:
            m["lpips"] = lpips_distance(lp_model, img, gt)
        per_image.append(m)
        if out_dir:
            atomic_write_png(img, os.path.join(out_dir, "render", _stem(view.name) + ".png"))
            atomic_write_png(gt, os.path.join(out_dir, "gt", _stem(view.name) + ".png"))
    mean = lambda k: float(np.mean([m[k] for m in per_image])) if per_image else None
    return {
        "psnr": mean("psnr"), "ssim": mean("ssim"),
        "lpips": mean("lpips") if lp_model is not None else None,
        "lpips_note": lp_note or "LPIPS (AlexNet) computed from weights on disk",
        "num_views": len(per_image), "per_image": per_image,
    }
