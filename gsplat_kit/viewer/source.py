"""What the viewer opens: a 3DGS `.ply`, a training checkpoint, or a run folder.

The splats come from `gsplat_kit.scene.splats.load_splats` (the one loader, with the one rule for which
file of a run folder). What only the viewer adds is the training cameras: from a gsplat_kit run's
config.json (the data it was trained on) or the original 3DGS output's cameras.json.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from gsplat_kit.common.errors import UserError
from gsplat_kit.common.safe_load import load_torch_data
from gsplat_kit.scene.splats import CHECKPOINT_SUFFIXES, CKPT_DIR, Splats, load_splats, resolve_splat_file


class SceneLoadError(UserError):
    """A scene that cannot be opened; the message names the file and what is wrong."""


@dataclasses.dataclass
class CameraView:
    """A training camera as the viewer needs it (OpenCV camera-to-world, pinhole intrinsics)."""

    name: str
    camtoworld: np.ndarray  # [4, 4]
    K: np.ndarray           # [3, 3]
    width: int
    height: int

    @property
    def fov_y(self) -> float:
        return 2.0 * math.atan(0.5 * self.height / float(self.K[1, 1]))


@dataclasses.dataclass
class ViewerScene:
    splats: Splats
    views: list[CameraView]
    label: str

    @property
    def num_gaussians(self) -> int:
        return self.splats.num

    @property
    def sh_degree(self) -> int:
        return self.splats.sh_degree


def as_camera_views(views) -> list[CameraView]:
    """Accepts gsplat_kit.scene `View`s (or anything with camtoworld/K/width/height) or CameraViews."""
    out = []
    for i, v in enumerate(views or []):
        if isinstance(v, CameraView):
            out.append(v)
            continue
        c2w = v.camtoworld if getattr(v, "camtoworld", None) is not None else np.linalg.inv(_np(v.viewmat))
        out.append(CameraView(str(getattr(v, "name", None) or f"view_{i:04d}"), _np(c2w).astype(np.float64),
                              _np(v.K).astype(np.float64), int(v.width), int(v.height)))
    return out


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _warn(msg: str):
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def _views_from_3dgs_cameras_json(path: Path) -> list[CameraView]:
    """The original 3DGS output's cameras.json (R is camera-to-world, position the centre)."""
    views = []
    for cam in json.loads(path.read_text()):
        c2w = np.eye(4)
        c2w[:3, :3] = np.asarray(cam["rotation"], dtype=np.float64)
        c2w[:3, 3] = np.asarray(cam["position"], dtype=np.float64)
        w, h = int(cam["width"]), int(cam["height"])
        K = np.array([[cam["fx"], 0, w / 2], [0, cam["fy"], h / 2], [0, 0, 1]], dtype=np.float64)
        views.append(CameraView(str(cam.get("img_name", cam.get("id"))), c2w, K, w, h))
    return views


def _views_from_train_config(cfg: dict, base: Path) -> list[CameraView]:
    """The training split of the scene a TrainConfig dict points at (its `data`, `data_factor`, ...)."""
    data = cfg.get("data") if isinstance(cfg, dict) else None
    if not isinstance(data, str) or not data:
        return []
    data_path = Path(data)
    if not data_path.is_absolute() and not data_path.exists():
        data_path = (base / data).resolve()
    from gsplat_kit.scene import load_scene

    try:
        scene = load_scene(str(data_path), data_factor=int(cfg.get("data_factor", 1)),
                           test_every=int(cfg.get("test_every", 8)),
                           white_background=bool(cfg.get("white_background", False)))
        return as_camera_views(scene.train_views)
    except Exception as e:  # cameras are a nicety: the splats still open
        _warn(f"could not load the training cameras from {data_path} ({type(e).__name__}: {e})")
        return []


def _run_folder_of(file: Path) -> Path:
    """The run folder a splat file belongs to: OUT for OUT/point_cloud.ply and OUT/ckpts/ckpt_N.pt."""
    return file.parent.parent if file.parent.name == CKPT_DIR else file.parent


def _training_views(path: Path, file: Path) -> list[CameraView]:
    """Cameras of a run folder, or of a checkpoint (its run folder's config.json, else its own config)."""
    if path.is_dir() and (path / "cameras.json").is_file():
        try:
            return _views_from_3dgs_cameras_json(path / "cameras.json")
        except (OSError, ValueError, KeyError, TypeError) as e:
            _warn(f"{path / 'cameras.json'}: unreadable ({e}); no training cameras shown")
    is_ckpt = file.suffix.lower() in CHECKPOINT_SUFFIXES
    if not (path.is_dir() or is_ckpt):
        return []      # a bare .ply: no cameras
    folder = path if path.is_dir() else _run_folder_of(file)
    cfg_path = folder / "config.json"
    if cfg_path.is_file():
        try:
            return _views_from_train_config(json.loads(cfg_path.read_text()), folder)
        except (OSError, json.JSONDecodeError) as e:
            _warn(f"{cfg_path}: unreadable ({e}); no training cameras shown")
            return []
    if is_ckpt:    # a checkpoint away from its run folder still names its data in its config
        ckpt = load_torch_data(file, "checkpoint")
        if isinstance(ckpt, dict) and isinstance(ckpt.get("config"), dict):
            return _views_from_train_config(ckpt["config"], file.parent)
    return []


def load_viewer_scene(path) -> ViewerScene:
    """Opens a .ply, a checkpoint (.pt/.pth/.ckpt) or a run folder. Raises SceneLoadError/FileNotFoundError."""
    path = Path(path).expanduser()
    try:
        file = resolve_splat_file(path)
        splats = load_splats(file)
    except SceneLoadError:
        raise
    except UserError as e:   # the reader's own error (PlyError, UnsafeFileError, ...): same message
        raise SceneLoadError(str(e)) from e
    return ViewerScene(splats, _training_views(path, file), str(file))
