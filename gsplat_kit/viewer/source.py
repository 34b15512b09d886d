"""What the viewer opens: a 3DGS `.ply`, a training checkpoint, or a run folder.

Everything ends as a `ViewerScene`: the splats dict (gsplat's parameter names, raw parameters: log
scales, logit opacities, SH coefficients) on the CPU, plus the training cameras when they are known.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pickle
from pathlib import Path

import numpy as np
import torch

SPLAT_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")


class SceneLoadError(ValueError):
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
    splats: dict[str, torch.Tensor]
    views: list[CameraView]
    label: str

    @property
    def num_gaussians(self) -> int:
        return int(self.splats["means"].shape[0])

    @property
    def sh_degree(self) -> int:
        return sh_degree_of(self.splats)


def sh_degree_of(splats: dict) -> int:
    k = 1 + (splats["shN"].shape[1] if "shN" in splats and splats["shN"] is not None else 0)
    return max(0, int(round(math.sqrt(k))) - 1)


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


def check_splats(splats: dict, where: str) -> dict[str, torch.Tensor]:
    """Validates shapes and values; returns detached float32 CPU tensors (shN may be [N, 0, 3])."""
    missing = [k for k in SPLAT_KEYS[:5] if k not in splats]
    if missing:
        raise SceneLoadError(f"{where}: missing Gaussian parameters {missing} (has {sorted(splats)})")
    out = {k: torch.as_tensor(splats[k]).detach().to("cpu", torch.float32) for k in SPLAT_KEYS[:5]}
    n = out["means"].shape[0] if out["means"].dim() == 2 else -1
    shn = splats.get("shN")
    out["shN"] = (torch.zeros(max(n, 0), 0, 3) if shn is None
                  else torch.as_tensor(shn).detach().to("cpu", torch.float32))
    if out["sh0"].dim() == 2:
        out["sh0"] = out["sh0"][:, None, :]
    expect = {"means": (n, 3), "scales": (n, 3), "quats": (n, 4), "opacities": (n,), "sh0": (n, 1, 3)}
    for k, shape in expect.items():
        if tuple(out[k].shape) != shape:
            raise SceneLoadError(f"{where}: '{k}' has shape {list(out[k].shape)}, expected {list(shape)}")
    if n <= 0:
        raise SceneLoadError(f"{where}: the scene holds no Gaussians")
    if out["shN"].dim() != 3 or out["shN"].shape[0] != n or out["shN"].shape[2] != 3 or \
            out["shN"].shape[1] not in (0, 3, 8, 15):
        raise SceneLoadError(f"{where}: 'shN' has shape {list(out['shN'].shape)}, expected [{n}, 0|3|8|15, 3]")
    for k, t in out.items():
        if not bool(torch.isfinite(t).all()):
            raise SceneLoadError(f"{where}: '{k}' holds NaN or inf values")
    return out


def _numpy_safe_globals() -> list:
    """What numpy arrays in a checkpoint (e.g. the trainer's RNG state) need under weights_only loading."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    dtypes = {type(np.dtype(t)) for t in (np.uint8, np.uint32, np.int64, np.float32, np.float64, np.bool_)}
    return [_reconstruct, np.ndarray, np.dtype, *dtypes]


def _load_checkpoint(path: Path) -> tuple[dict, dict]:
    """(splats, training config or {}) from a checkpoint. Loaded with weights_only (tensors, numpy arrays,
    plain containers): the page can ask for any path, and a viewer must never run a file's pickled code."""
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise SceneLoadError(f"{path}: the checkpoint holds objects other than tensors and arrays; the viewer "
                             f"does not unpickle them ({str(e).splitlines()[0][:200]})") from None
    except Exception as e:  # truncated zip, not a torch file, ...
        raise SceneLoadError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict):
        raise SceneLoadError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    for key in ("splats", "gaussians", "model"):
        if isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    # state_dict style: "splats.means" -> "means"
    flat = {k.rsplit(".", 1)[-1]: v for k, v in ckpt.items() if isinstance(v, torch.Tensor)}
    return check_splats(flat, str(path)), config


def _load_ply(path: Path) -> dict:
    from gsplat_kit.scene import load_ply

    try:
        splats = load_ply(path)
    except FileNotFoundError:
        raise
    except Exception as e:
        msg = str(e)
        if str(path) not in msg and path.name not in msg:
            msg = f"{path}: {msg}"
        raise SceneLoadError(f"not a valid 3DGS .ply: {msg}") from None
    return check_splats(splats, str(path))


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


def _views_from_config(folder: Path) -> list[CameraView]:
    """Training cameras of a gsplat_kit run folder: config.json names the data it was trained on."""
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        return []
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"warning: {cfg_path}: unreadable ({e}); no training cameras shown")
        return []
    return _views_from_train_config(cfg, folder)


def _views_from_train_config(cfg: dict, base: Path) -> list[CameraView]:
    """Loads the training split of the scene a TrainConfig dict points at (its `data`, `data_factor`...)."""
    data = cfg.get("data") if isinstance(cfg, dict) else None
    if not isinstance(data, str) or not data:
        return []
    data_path = Path(data)
    if not data_path.is_absolute() and not data_path.exists():
        data_path = (base / data).resolve()
    try:
        import inspect

        from gsplat_kit.scene import load_scene

        params = inspect.signature(load_scene).parameters
        aliases = {"data_factor": ("data_factor", "factor", "downscale"), "test_every": ("test_every",),
                   "white_background": ("white_background",)}
        kwargs = {}
        for key, names in aliases.items():
            if key in cfg:
                for n in names:
                    if n in params:
                        kwargs[n] = cfg[key]
                        break
        scene = load_scene(data_path, **kwargs)
        return as_camera_views(scene.train_views)
    except Exception as e:  # cameras are a nicety: the splats still open
        print(f"warning: could not load the training cameras from {data_path} ({type(e).__name__}: {e})")
        return []


def _find_in_run_folder(folder: Path) -> Path:
    candidates = [folder / "point_cloud.ply"]
    iters = sorted(folder.glob("point_cloud/iteration_*/point_cloud.ply"),
                   key=lambda p: int(p.parent.name.split("_")[-1]) if p.parent.name.split("_")[-1].isdigit() else -1)
    candidates += iters[::-1]
    candidates += sorted(folder.glob("*.ply"))
    ckpts = sorted(list(folder.glob("ckpts/*.pt")) + list(folder.glob("*.pt")), key=lambda p: p.stat().st_mtime)
    candidates += ckpts[::-1]
    for c in candidates:
        if c.is_file():
            return c
    raise SceneLoadError(f"{folder}: no point_cloud.ply, point_cloud/iteration_*/point_cloud.ply, *.ply or "
                         f"checkpoint (*.pt) found in this folder")


def load_viewer_scene(path) -> ViewerScene:
    """Opens a .ply, a checkpoint (.pt/.pth/.ckpt) or a run folder. Raises SceneLoadError/FileNotFoundError."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    views: list[CameraView] = []
    if path.is_dir():
        folder, path = path, _find_in_run_folder(path)
        if (folder / "cameras.json").is_file():
            try:
                views = _views_from_3dgs_cameras_json(folder / "cameras.json")
            except (OSError, ValueError, KeyError, TypeError) as e:
                print(f"warning: {folder / 'cameras.json'}: unreadable ({e}); no training cameras shown")
        if not views:
            views = _views_from_config(folder)
    suffix = path.suffix.lower()
    if suffix == ".ply":
        splats = _load_ply(path)
    elif suffix in (".pt", ".pth", ".ckpt"):
        splats, config = _load_checkpoint(path)
        if not views and config:
            views = _views_from_train_config(config, path.parent)
    else:
        raise SceneLoadError(f"{path}: unknown file type '{suffix}' (expected .ply, .pt/.pth/.ckpt or a run folder)")
    return ViewerScene(splats, views, str(path))
