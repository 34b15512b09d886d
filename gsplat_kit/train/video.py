"""Smooth camera paths through the training cameras (ellipse or circular orbit) and mp4 rendering."""
from __future__ import annotations

import math

import imageio.v2 as imageio
import numpy as np
import torch
from tqdm import tqdm

from gsplat_kit.common.atomic import atomic_path
from gsplat_kit.common.errors import UserError
from gsplat_kit.scene.splats import Splats
from gsplat_kit.train.rendering import render


def _focus_point(centers: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """The point nearest to every optical axis (least squares), where the cameras look together."""
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for c, d in zip(centers, dirs):
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ c
    if np.linalg.cond(A) > 1e8:       # all axes parallel: look at a point ahead of the mean camera
        return centers.mean(0) + dirs.mean(0) * np.linalg.norm(centers - centers.mean(0), axis=1).mean()
    return np.linalg.solve(A, b)


def look_at_c2w(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Camera-to-world (OpenCV: x right, y down, z forward) at `eye` looking at `target`, `up` upwards."""
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(-up, z)
    if np.linalg.norm(x) < 1e-8:
        x = np.cross(np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0]), z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, eye
    return m


def camera_path(camtoworlds: np.ndarray, n_frames: int = 120, kind: str = "ellipse") -> np.ndarray:
    """[M, 4, 4] training camera-to-worlds -> [n_frames, 4, 4] along a closed path around their focus.

    "ellipse": in the cameras' mean horizontal plane (up = mean of the cameras' -y axes), semi-axes from
    the spread of the camera centres (90th percentile along the two principal directions), a gentle
    height wave of the cameras' vertical spread. "orbit": a circle at the mean radius and height.
    """
    c2w = np.asarray(camtoworlds, dtype=np.float64)
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4) or len(c2w) == 0:
        raise ValueError(f"need [M, 4, 4] camera-to-world matrices, got shape {c2w.shape}")
    if kind not in ("ellipse", "orbit"):
        raise ValueError(f"path must be 'ellipse' or 'orbit', got {kind!r}")
    centers, dirs = c2w[:, :3, 3], c2w[:, :3, 2]
    up = -c2w[:, :3, 1].mean(0)
    up = up / max(np.linalg.norm(up), 1e-12)
    if len(c2w) > 2:
        # cameras that circle an object lie near a plane whose normal is the true up; the mean camera up
        # leans towards the object when the cameras look down at it (a tilted horizon)
        _, sv, vt = np.linalg.svd(centers - centers.mean(0), full_matrices=False)
        if sv[1] > 0 and sv[2] < 0.5 * sv[1]:
            normal = vt[2] if vt[2] @ up >= 0 else -vt[2]
            up = normal
    focus = _focus_point(centers, dirs) if len(c2w) > 1 else centers[0] + dirs[0]
    rel = centers - focus
    h = rel @ up
    flat = rel - np.outer(h, up)
    if len(c2w) > 2:
        _, _, vt = np.linalg.svd(flat - flat.mean(0), full_matrices=False)
        e1 = vt[0] - (vt[0] @ up) * up
    else:
        e1 = flat.mean(0) if np.linalg.norm(flat.mean(0)) > 1e-9 else np.cross(up, [1.0, 0.0, 0.0])
    e1 = e1 / np.linalg.norm(e1)
    e2 = np.cross(up, e1)
    if kind == "orbit":
        r = np.linalg.norm(flat, axis=1).mean()
        a = b = r
        center, amp = np.zeros(3), 0.0
    else:
        center = flat.mean(0)
        a = np.percentile(np.abs((flat - center) @ e1), 90)
        b = np.percentile(np.abs((flat - center) @ e2), 90)
        # a degenerate (line-like) spread still needs a visible sweep
        a, b = max(a, 0.2 * b, 1e-3), max(b, 0.2 * a, 1e-3)
        amp = np.std(h)
    out = []
    for t in np.linspace(0, 2 * math.pi, n_frames, endpoint=False):
        eye = focus + center + a * math.cos(t) * e1 + b * math.sin(t) * e2 + (h.mean() + amp * math.sin(t)) * up
        out.append(look_at_c2w(eye, focus, up))
    return np.stack(out)


@torch.no_grad()
def render_video(splats: dict, views, out_path: str, n_frames: int = 120, fps: int = 30, kind: str = "ellipse",
                 scale: float = 1.0, sh_degree: int | None = None, background=None, progress: bool = True) -> str:
    """Renders the path with the first training view's intrinsics (times `scale`) to an mp4, atomically.

    H.264 in yuv420p through imageio-ffmpeg: the codec every browser and player opens (OpenCV's pip wheels
    write only MPEG-4 Part 2 into .mp4, which browsers do not play)."""
    if not views:
        raise UserError("need at least one camera to place the video path")
    v0 = views[0]
    W, H = int(round(v0.width * scale)) // 2 * 2, int(round(v0.height * scale)) // 2 * 2   # even, for yuv420p
    if W < 2 or H < 2:
        raise UserError(f"--scale {scale}: the video would be {W}x{H} pixels")
    K = torch.as_tensor(np.asarray(v0.K), dtype=torch.float32).clone()
    K[:2] *= scale
    c2ws = np.stack([np.asarray(torch.as_tensor(v.camtoworld).cpu(), dtype=np.float64) for v in views])
    path = camera_path(c2ws, n_frames, kind)
    deg = Splats(splats).sh_degree if sh_degree is None else sh_degree
    with atomic_path(out_path) as tmp:
        with imageio.get_writer(tmp, fps=fps, codec="libx264", quality=8, macro_block_size=1,
                                ffmpeg_log_level="error") as w:
            for c2w in tqdm(path, desc="render", disable=not progress):
                vm = torch.linalg.inv(torch.as_tensor(c2w, dtype=torch.float32))
                rgb, _, _ = render(splats, vm, K, W, H, deg, background)
                w.append_data((rgb[0].clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8))
    return out_path
