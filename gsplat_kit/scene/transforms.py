"""transforms.json scenes: NeRF-synthetic (Blender), instant-ngp and nerfstudio (`ns-process-data`).

One reader for the three: intrinsics global or per frame (fl_x, fl_y, cx, cy, w, h or camera_angle_x),
`camera_model` PINHOLE / OPENCV (k1, k2, [k3,] p1, p2) / OPENCV_FISHEYE (k1..k4), nerfstudio's
`applied_transform` (undone, so poses and points come back in the COLMAP world they were made from),
`ply_file_path` initial points and per-frame `mask_path` masks. Every field is checked where it is
read; errors are `DatasetError`s naming the file, the frame and the field.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import torch

from gsplat_kit.scene.dataset import DatasetError, View, check_image_size, confined, warn_resized
from gsplat_kit.scene.images import IMAGE_EXTS, image_size

CAMERA_MODELS = {"PINHOLE": (), "SIMPLE_PINHOLE": (), "OPENCV": ("k1", "k2", "p1", "p2"),
                 "OPENCV_FISHEYE": ("k1", "k2", "k3", "k4")}
MAX_JSON_BYTES = 1 << 28


def load_transforms(root: str, fname: str, factor: int, white_background: bool):
    """(views, points [P, 3], colours [P, 3], background) of a transforms*.json scene."""
    bg = torch.ones(3) if white_background else torch.zeros(3)
    # All frames go into one pool, split every test_every-th by name like COLMAP scenes. (A
    # transforms_test.json whose images are not on disk, as in ../shared/data's lego, is ignored.)
    files = [fname]
    test_json = os.path.join(root, "transforms_test.json")
    if fname == "transforms_train.json" and os.path.exists(test_json):
        frames = _frames(_read_json(test_json), test_json)
        first = frames[0].get("file_path") if isinstance(frames[0], dict) else None
        if isinstance(first, str) and _frame_file(root, first, f"{test_json}: frame 0 file_path") is not None:
            files.append("transforms_test.json")
    views, resized = [], []
    points = None
    for f in files:
        meta_path = os.path.join(root, f)
        meta = _read_json(meta_path)
        fields = _Fields(meta, meta_path)
        to_colmap = fields.applied_transform_inverse()
        for i, fr in enumerate(_frames(meta, meta_path)):
            views.append(_view(root, meta_path, fields, fr, i, factor, bg, to_colmap, resized))
        if points is None and meta.get("ply_file_path") is not None:
            ply_rel = fields.string(meta, "ply_file_path")
            ply_path = confined(root, ply_rel, f"{meta_path}: ply_file_path", DatasetError)
            try:
                points = read_point_cloud(str(ply_path))
            except DatasetError as e:
                raise DatasetError(f"{meta_path}: ply_file_path: {e}") from None
            if to_colmap is not None:
                points = (points[0] @ to_colmap[:3, :3].T + to_colmap[:3, 3], points[1])
    warn_resized(resized)
    if points is None:
        points = _random_points(views)
    return views, torch.tensor(points[0], dtype=torch.float32), torch.tensor(points[1], dtype=torch.float32), bg


def _view(root, meta_path, fields, fr, i, factor, bg, to_colmap, resized) -> View:
    where = f"{meta_path}: frame {i}"
    if not isinstance(fr, dict):
        raise DatasetError(f"{where} is {type(fr).__name__}, not an object with 'file_path' and 'transform_matrix'")
    if "file_path" not in fr or "transform_matrix" not in fr:
        raise DatasetError(f"{where} needs 'file_path' and 'transform_matrix'")
    rel = fields.string(fr, "file_path", where)
    img_path = _frame_file(root, rel, f"{where} file_path")
    if img_path is None:
        raise FileNotFoundError(f"{os.path.join(root, rel)}: frame {i} of {meta_path} is missing on disk")
    src = _scaled(root, rel, img_path, factor, f"{where} file_path", "images")
    size = image_size(src)
    w0, h0 = fields.size(fr, where) or (image_size(img_path) if src != img_path else size)
    w, h = check_image_size(src, size, (w0, h0), factor, src != img_path, resized)
    fx, fy, cx, cy = fields.intrinsics(fr, w0, h0, where)
    sx, sy = w / w0, h / h0
    K = torch.tensor([[fx * sx, 0, cx * sx], [0, fy * sy, cy * sy], [0, 0, 1]], dtype=torch.float32)
    c2w = fields.matrix(fr.get("transform_matrix"), f"{where} transform_matrix")
    if to_colmap is not None:
        c2w = to_colmap @ c2w
    c2w[:3, 1:3] *= -1  # Blender/OpenGL (y up, z back) -> OpenCV (y down, z forward)
    model, dist = fields.distortion(fr, where)
    mask = None
    if fr.get("mask_path") is not None:
        mrel = fields.string(fr, "mask_path", where)
        mfull = confined(root, mrel, f"{where} mask_path", DatasetError)
        if not mfull.is_file():
            raise FileNotFoundError(f"{mfull}: mask of frame {i} of {meta_path} is missing on disk")
        mask = _scaled(root, mrel, str(mfull), factor, f"{where} mask_path", "masks")
        check_image_size(mask, image_size(mask), (w0, h0), factor, mask != str(mfull), resized, exact=(w, h))
    added_ext = "" if os.path.basename(img_path) == os.path.basename(rel) else os.path.splitext(img_path)[1]
    name = os.path.normpath(rel + added_ext)
    return View(name, w, h, K, torch.tensor(np.linalg.inv(c2w), dtype=torch.float32), src, background=bg,
                distortion=dist, fisheye=model == "OPENCV_FISHEYE", mask_path=mask)


def _frame_file(root: str, rel: str, what: str) -> str | None:
    """root/rel, or root/rel + an image extension (NeRF-synthetic leaves it off); None when absent."""
    p = confined(root, rel, what, DatasetError)
    if p.is_file():
        return str(p)
    for ext in IMAGE_EXTS:
        q = confined(root, rel + ext, what, DatasetError)
        if q.is_file():
            return str(q)
    return None


def _scaled(root: str, rel: str, full: str, factor: int, what: str, folder: str) -> str:
    """nerfstudio keeps downscaled copies beside the originals: images/x.png -> images_4/x.png."""
    parts = os.path.normpath(rel).split(os.sep)
    if factor > 1 and len(parts) > 1 and parts[0] == folder:
        scaled = confined(root, "/".join([f"{folder}_{factor}", *parts[1:]]), what, DatasetError)
        if scaled.is_file():
            return str(scaled)
    return full


def _read_json(path: str) -> dict:
    if os.path.getsize(path) > MAX_JSON_BYTES:
        raise DatasetError(f"{path}: {os.path.getsize(path):,} bytes, more than a transforms file can sensibly be")
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r})") from None
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise DatasetError(f"{path}: not valid JSON ({str(e)[:120] or 'nested too deeply'})") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}: the top level is a JSON {type(meta).__name__}, not an object with 'frames'")
    return meta


def _frames(meta: dict, path: str) -> list:
    frames = meta.get("frames")
    if not frames:
        raise DatasetError(f"{path}: no 'frames'")
    if not isinstance(frames, list):
        raise DatasetError(f"{path}: 'frames' is a JSON {type(frames).__name__}, not a list")
    return frames


class _Fields:
    """Typed, range-checked access to a transforms file's fields (a frame's own value wins)."""

    def __init__(self, meta: dict, path: str):
        self.meta, self.path = meta, path

    def _get(self, fr: dict, key: str):
        return fr[key] if key in fr else self.meta.get(key)

    def string(self, obj: dict, key: str, where: str | None = None) -> str:
        v = obj.get(key)
        if not isinstance(v, str):
            raise DatasetError(f"{where or self.path}: '{key}' is {_kind(v)}, not a path string")
        return v

    def number(self, fr: dict, key: str, where: str, positive: bool = False, default=None) -> float | None:
        v = self._get(fr, key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise DatasetError(f"{where}: '{key}' is {_kind(v)}, not a number")
        if not math.isfinite(v) or (positive and v <= 0):
            raise DatasetError(f"{where}: '{key}' is {v}; it must be {'positive and ' if positive else ''}finite")
        return float(v)

    def size(self, fr: dict, where: str) -> tuple[int, int] | None:
        w, h = self.number(fr, "w", where, positive=True), self.number(fr, "h", where, positive=True)
        if w is None or h is None:
            return None
        if w != int(w) or h != int(h) or w > 1 << 20 or h > 1 << 20:
            raise DatasetError(f"{where}: image size w={w}, h={h} is not a whole number of pixels up to 2^20")
        return int(w), int(h)

    def intrinsics(self, fr: dict, w: int, h: int, where: str) -> tuple[float, float, float, float]:
        fx = self.number(fr, "fl_x", where, positive=True)
        if fx is not None:
            fy = self.number(fr, "fl_y", where, positive=True, default=fx)
        else:
            ax = self.number(fr, "camera_angle_x", where, positive=True)
            if ax is None:
                raise DatasetError(f"{where}: no focal length (fl_x or camera_angle_x)")
            ay = self.number(fr, "camera_angle_y", where, positive=True)
            for key, a in (("camera_angle_x", ax), ("camera_angle_y", ay)):
                if a is not None and a >= math.pi:
                    raise DatasetError(f"{where}: '{key}' is {a} rad; a field of view must be below pi")
            fx = 0.5 * w / math.tan(0.5 * ax)
            fy = 0.5 * h / math.tan(0.5 * ay) if ay is not None else fx
        return fx, fy, self.number(fr, "cx", where, default=w / 2), self.number(fr, "cy", where, default=h / 2)

    def distortion(self, fr: dict, where: str) -> tuple[str, tuple | None]:
        model = self._get(fr, "camera_model")
        if model is None:  # instant-ngp: no model name, OPENCV coefficients when present
            model = "OPENCV"
        if not isinstance(model, str) or model not in CAMERA_MODELS:
            raise DatasetError(f"{where}: camera_model {model!r} is not one of {sorted(CAMERA_MODELS)}")
        keys = CAMERA_MODELS[model]
        if model == "OPENCV" and self._get(fr, "k3"):
            keys = keys + ("k3",)
        coeffs = tuple(self.number(fr, k, where, default=0.0) for k in keys)
        return model, coeffs if any(coeffs) else None

    def matrix(self, value, what: str, rows=(3, 4)) -> np.ndarray:
        """A 3x4 or 4x4 finite, invertible affine matrix as 4x4 float64."""
        try:
            m = np.array(value, dtype=np.float64)
        except (ValueError, TypeError):
            raise DatasetError(f"{what} is not a numeric matrix") from None
        if m.ndim != 2 or m.shape[1] != 4 or m.shape[0] not in rows:
            raise DatasetError(f"{what} is not a {' or '.join(f'{r}x4' for r in rows)} matrix "
                               f"(shape {list(m.shape)})")
        if not np.isfinite(m).all():
            raise DatasetError(f"{what} holds NaN or Inf")
        out = np.eye(4)
        out[:m.shape[0]] = m
        if abs(np.linalg.det(out[:3, :3])) < 1e-12:
            raise DatasetError(f"{what}: its 3x3 part is singular (not a camera pose)")
        return out

    def applied_transform_inverse(self) -> np.ndarray | None:
        if self.meta.get("applied_transform") is None:
            return None
        return np.linalg.inv(self.matrix(self.meta["applied_transform"], f"{self.path}: applied_transform"))


def _kind(v) -> str:
    return "missing" if v is None else f"a JSON {type(v).__name__} ({json.dumps(v)[:40]})"


def read_point_cloud(path: str) -> tuple[np.ndarray, np.ndarray]:
    """x, y, z (and red, green, blue when present, else grey) of a .ply's vertices, as nerfstudio's
    `ply_file_path` holds them; (xyz [P, 3] float64, rgb [P, 3] float in [0, 1])."""
    import plyfile

    _check_vertex_count(path)
    try:
        ply = plyfile.PlyData.read(path)
        v = ply["vertex"].data
        xyz = np.stack([np.asarray(v[k], np.float64) for k in ("x", "y", "z")], -1)
        names = v.dtype.names
        if all(k in names for k in ("red", "green", "blue")):
            rgb = np.stack([np.asarray(v[k], np.float64) for k in ("red", "green", "blue")], -1)
            rgb = rgb / 255.0 if v["red"].dtype.kind in "ui" else rgb
        else:
            rgb = np.full_like(xyz, 0.5)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as e:  # plyfile raises its own and numpy's errors for malformed files
        raise DatasetError(f"{path}: not a readable point-cloud .ply ({type(e).__name__}: {e})") from None
    if len(xyz) == 0:
        raise DatasetError(f"{path}: the point cloud has no vertices (nothing to initialise Gaussians from)")
    bad = ~np.isfinite(xyz).all(1)
    if bad.any():
        raise DatasetError(f"{path}: vertex {int(np.argmax(bad))} has a non-finite position")
    return xyz, np.clip(rgb, 0.0, 1.0)


def _check_vertex_count(path: str):
    """Refuses a header whose vertex count cannot fit in the file, before anything is allocated."""
    with open(path, "rb") as f:
        head = f.read(65536)
    end = head.find(b"end_header")
    if not head.startswith(b"ply") or end < 0:
        raise DatasetError(f"{path}: not a .ply file (no 'ply' magic or 'end_header' in its first 64 KiB)")
    for line in head[:end].splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[:2] == [b"element", b"vertex"]:
            try:
                count = int(parts[2])
            except ValueError:
                raise DatasetError(f"{path}: vertex count {parts[2][:20]!r} is not a number") from None
            # at least 3 bytes per vertex in any encoding ("0 0 0" ascii rows are 6, binary xyz 12)
            if count < 0 or count * 3 > os.path.getsize(path):
                raise DatasetError(f"{path}: the header claims {count:,} vertices; a {os.path.getsize(path):,}-byte "
                                   f"file cannot hold them")


def _random_points(views) -> tuple[np.ndarray, np.ndarray]:
    # No SfM points in these scenes: 100k random points in a cube around the origin that the cameras
    # look at, as 3DGS does (its half-size 1.3 for NeRF-synthetic's cameras at radius ~4).
    g = np.random.default_rng(0)
    centres = np.stack([v.camtoworld[:3, 3].numpy() for v in views])
    half = 0.33 * float(np.linalg.norm(centres, axis=1).mean())
    return (g.random((100_000, 3)) * 2 - 1) * half, g.random((100_000, 3))
