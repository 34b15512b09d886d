"""Training's final 3DGS .ply. Every other export goes through gsplat_kit.scene.formats.save_splats
(.ply, .compressed.ply, .splat, .spz), and splats come in through gsplat_kit.scene.splats.load_splats."""
from __future__ import annotations

from gsplat_kit.scene import save_ply
from gsplat_kit.scene.splats import SPLAT_KEYS


def write_ply(path: str, splats: dict):
    save_ply(path, {k: splats[k].detach().cpu() for k in SPLAT_KEYS})
