"""Held-out evaluation: render each test view, write it next to its ground truth, and score it."""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from gsplat_kit.common.atomic import atomic_path
from gsplat_kit.common.errors import UserError
from gsplat_kit.scene.splats import Splats
from gsplat_kit.train.metrics import image_metrics, load_lpips, lpips_distance
from gsplat_kit.train.rendering import render_view


def write_png(img: torch.Tensor, path: str):
    """An [H, W, 3] image in [0, 1] as an 8-bit PNG, written atomically."""
    arr = (img.detach().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def load_image_tensor(view) -> torch.Tensor:
    """view.load_image() as a float32 [H, W, 3] tensor in [0, 1] (uint8 arrays are rescaled)."""
    img = view.load_image()
    t = torch.as_tensor(np.asarray(img)) if not isinstance(img, torch.Tensor) else img
    t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
    if t.dim() != 3 or t.shape[-1] != 3 or tuple(t.shape[:2]) != (view.height, view.width):
        raise UserError(f"image of view {view.name}: expected [{view.height}, {view.width}, 3], got {list(t.shape)}")
    return t


def _stem(name: str) -> str:
    return os.path.splitext(os.path.basename(str(name)))[0]


@torch.no_grad()
def evaluate(splats: dict, views, out_dir: str | None = None, background=None, lpips_weights: str | None = None,
             sh_degree: int | None = None, progress: bool = True) -> dict:
    """Scores `views`; with out_dir, writes out_dir/render/<name>.png beside out_dir/gt/<name>.png.

    Returns {"psnr", "ssim", "lpips" (None when its weights are missing), "lpips_note", "per_image", ...}.
    """
    if out_dir:
        os.makedirs(os.path.join(out_dir, "render"), exist_ok=True)
        os.makedirs(os.path.join(out_dir, "gt"), exist_ok=True)
    lp_model, lp_note = load_lpips(lpips_weights)
    dev = splats["means"].device
    if lp_model is not None:
        lp_model = lp_model.to(dev)
    deg = Splats(splats).sh_degree if sh_degree is None else sh_degree
    per_image = []
    for i, view in enumerate(tqdm(views, desc="eval", disable=not progress, leave=False)):
        gt = load_image_tensor(view).to(dev)
        img = render_view(splats, view, deg, background)
        m = {"name": str(view.name), **image_metrics(img, gt)}
        if lp_model is not None:
            m["lpips"] = lpips_distance(lp_model, img, gt)
        per_image.append(m)
        if out_dir:
            write_png(img, os.path.join(out_dir, "render", _stem(view.name) + ".png"))
            write_png(gt, os.path.join(out_dir, "gt", _stem(view.name) + ".png"))
    mean = lambda k: float(np.mean([m[k] for m in per_image])) if per_image else None
    return {
        "psnr": mean("psnr"), "ssim": mean("ssim"),
        "lpips": mean("lpips") if lp_model is not None else None,
        "lpips_note": lp_note or "LPIPS (AlexNet) computed from weights on disk",
        "num_views": len(per_image), "per_image": per_image,
    }
