"""Comparing an SfM result with known cameras: camera centres and a similarity (Umeyama) alignment."""
from __future__ import annotations

import glob
import json
import os

import numpy as np


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """The similarity (s, R, t) minimising sum |s R src_i + t - dst_i|^2 (Umeyama 1991); src, dst [N, 3]."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[0] < 3:
        raise ValueError(f"umeyama needs two [N>=3, D] arrays of the same shape, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    U, S, Vt = np.linalg.svd(cov)
    D = np.eye(src.shape[1])
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        D[-1, -1] = -1  # a reflection is not a rotation
    R = U @ D @ Vt
    var_s = (xs ** 2).sum() / len(src)
    s = float(np.trace(np.diag(S) @ D) / var_s)
    t = mu_d - s * R @ mu_s
    return s, R, t


def align_centres(est: np.ndarray, gt: np.ndarray) -> dict:
    """Aligns estimated camera centres to the known ones; errors are in the known (gt) units."""
    s, R, t = umeyama(est, gt)
    aligned = (s * (R @ np.asarray(est, np.float64).T)).T + t
    err = np.linalg.norm(aligned - gt, axis=1)
    extent = float(np.linalg.norm(gt - gt.mean(0), axis=1).max())
    return {"scale": s, "R": R, "t": t, "errors": err, "max_error": float(err.max()),
            "mean_error": float(err.mean()), "extent": extent}


def model_centres(model) -> dict[str, np.ndarray]:
    """Camera centres (world) by image name from a gsplat_kit.scene.colmap.Model."""
    return {im.name: -im.rotation().T @ im.tvec for im in model.images.values()}


def strecha_centres(folder: str) -> dict[str, np.ndarray]:
    """Known camera centres of a Strecha et al. capture, keyed like its .png images: each
    gt_dense_cameras/NNNN.jpg.camera holds K (3 rows), 0 0 0, R camera-to-world (3 rows), the centre."""
    out = {}
    for f in sorted(glob.glob(os.path.join(folder, "gt_dense_cameras", "*.camera"))):
        out[os.path.basename(f).split(".")[0] + ".png"] = np.loadtxt(f, max_rows=8)[7]
    return out


def json_centres(path: str) -> dict[str, np.ndarray]:
    """Known camera centres from a cameras_gt.json (frames of file + 4x4 world_to_camera, as
    scripts/make_demo_scene.py writes for data/demo_scene), keyed by image file name."""
    with open(path) as fh:
        gt = json.load(fh)
    out = {}
    for fr in gt["frames"]:
        w2c = np.array(fr["world_to_camera"])
        out[os.path.basename(fr["file"])] = -w2c[:3, :3].T @ w2c[:3, 3]
    return out
