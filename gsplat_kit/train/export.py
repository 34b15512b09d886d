"""Splats in and out: the standard 3DGS .ply (through gsplat_kit.scene), checkpoints, and the compact
`.splat` format of antimatter15's WebGL viewer (32 bytes per Gaussian)."""
from __future__ import annotations

import os
import tempfile

import numpy as np
import torch

from gsplat_kit.train.init import sh_to_rgb

SPLAT_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")


def write_ply(path: str, splats: dict):
    from gsplat_kit.scene import save_ply

    save_ply(path, {k: splats[k].detach().cpu() for k in SPLAT_KEYS})


def read_splats(path: str, device="cpu") -> dict:
    """Splat dict (plain tensors) from a .ply or a training checkpoint (.pt), or an output folder
    (its point_cloud.ply, else its latest checkpoint)."""
    if os.path.isdir(path):
        ply = os.path.join(path, "point_cloud.ply")
        if os.path.isfile(ply):
            path = ply
        else:
            from gsplat_kit.train.checkpoint import latest_checkpoint

            ck = latest_checkpoint(path)
            if ck is None:
                raise FileNotFoundError(f"{path}: no point_cloud.ply and no checkpoint under ckpts/")
            path = ck
    if not os.path.isfile(path):
        raise FileNotFoundError(f"splat file not found: {path}")
    if path.endswith(".ply"):
        from gsplat_kit.scene import load_ply

        splats = load_ply(path)
    elif path.endswith(".pt"):
        from gsplat_kit.train.checkpoint import load_checkpoint

        splats = load_checkpoint(path)["splats"]
    else:
        raise ValueError(f"{path}: expected a .ply, a checkpoint .pt or an output folder")
    missing = [k for k in SPLAT_KEYS if k not in splats]
    if missing:
        raise ValueError(f"{path}: splats lack {missing}")
    return {k: torch.as_tensor(splats[k]).float().to(device) for k in SPLAT_KEYS}


def write_splat(path: str, splats: dict):
    """antimatter15 .splat: position f32x3, scale f32x3, RGBA u8x4, rotation u8x4 (wxyz), sorted by
    size x opacity so that a viewer can stream the important Gaussians first."""
    means = splats["means"].detach().cpu().float()
    scales = torch.exp(splats["scales"].detach().cpu().float())
    opac = torch.sigmoid(splats["opacities"].detach().cpu().float())
    rgb = sh_to_rgb(splats["sh0"].detach().cpu().float()[:, 0]).clamp(0, 1)
    quats = torch.nn.functional.normalize(splats["quats"].detach().cpu().float(), dim=-1)
    order = torch.argsort(-(scales.prod(-1) * opac))
    rec = np.zeros(len(means), dtype=[("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
    rec["pos"] = means[order].numpy()
    rec["scale"] = scales[order].numpy()
    rec["rgba"] = (torch.cat([rgb, opac[:, None]], -1)[order] * 255).round().clamp(0, 255).numpy().astype(np.uint8)
    rec["rot"] = (quats[order] * 128 + 128).round().clamp(0, 255).numpy().astype(np.uint8)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".splat", dir=folder)
    with os.fdopen(fd, "wb") as f:
        f.write(rec.tobytes())
    os.replace(tmp, path)
