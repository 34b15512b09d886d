"""Scenes for training: posed views and an initial point cloud, from a COLMAP folder (images/ +
sparse/0/) or a NeRF-style transforms*.json folder (NeRF-synthetic's Blender convention, or
instant-ngp's with OPENCV distortion).

Cameras are pinhole and in OpenCV's convention (x right, y down, z forward). Distorted COLMAP models
are undistorted once through pycolmap; downscaled images come from images_N/ when present, else are
resized once and cached (under $GSPLAT_KIT_CACHE, default ~/.cache/gsplat_kit).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image as PILImage

from gsplat_kit.scene.colmap import ColmapError, find_model_dir, read_model

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".JPG", ".JPEG", ".PNG")


def cache_dir(*parts: str) -> str:
    d = os.path.join(os.environ.get("GSPLAT_KIT_CACHE", os.path.expanduser("~/.cache/gsplat_kit")), *parts)
    os.makedirs(d, exist_ok=True)
    return d


@dataclass
class View:
    name: str
    width: int
    height: int
    K: torch.Tensor          # [3, 3] float32
    viewmat: torch.Tensor    # [4, 4] world-to-camera (OpenCV)
    image_path: str
    background: torch.Tensor | None = None          # RGB used to composite RGBA images
    distortion: tuple | None = None                 # (k1, k2, p1, p2) still to undo (instant-ngp)
    _image: torch.Tensor | None = field(default=None, repr=False)

    @property
    def camtoworld(self) -> torch.Tensor:
        return torch.linalg.inv(self.viewmat.double()).float()

    def load_image(self) -> torch.Tensor:
        """[H, W, 3] float32 in [0, 1], loaded on first use and kept."""
        if self._image is None:
            self._image = _load_rgb(self.image_path, self.width, self.height, self.background, self.distortion, self.K)
        return self._image


@dataclass
class Scene:
    root: str
    train_views: list[View]
    test_views: list[View]
    points: torch.Tensor       # [P, 3] float32
    points_rgb: torch.Tensor   # [P, 3] float32 in [0, 1]
    scene_scale: float
    background: torch.Tensor | None = None

    @property
    def views(self) -> list[View]:
        return sorted(self.train_views + self.test_views, key=lambda v: v.name)


def load_scene(path: str, data_factor: int = 1, test_every: int = 8, white_background: bool = False,
               undistort: bool = True) -> Scene:
    """Loads a COLMAP or transforms.json scene; every `test_every`-th view (by name) is held out."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such scene folder")
    if not (isinstance(data_factor, int) and data_factor >= 1):
        raise ValueError(f"data_factor must be a positive int, got {data_factor!r}")
    jsons = [f for f in ("transforms_train.json", "transforms.json") if os.path.exists(os.path.join(path, f))]
    if jsons:
        views, points, rgb, bg = _load_transforms(path, jsons[0], data_factor, white_background)
    elif find_model_dir(path) is not None:
        views, points, rgb = _load_colmap(path, data_factor, undistort)
        bg = None
    else:
        raise FileNotFoundError(f"{path}: neither a COLMAP scene (images/ + sparse/0/cameras.bin|txt) nor a "
                                f"transforms*.json scene")
    views = sorted(views, key=lambda v: v.name)
    test_ids = set(range(0, len(views), test_every)) if test_every and test_every > 0 else set()
    if len(test_ids) == len(views) and views:
        test_ids = set()
    train = [v for i, v in enumerate(views) if i not in test_ids]
    test = [v for i, v in enumerate(views) if i in test_ids]
    centres = torch.stack([v.camtoworld[:3, 3] for v in views])
    scale = 1.1 * float((centres - centres.mean(0)).norm(dim=1).max()) if len(views) > 1 else 1.0
    return Scene(path, train, test, points, rgb, max(scale, 1e-6), bg)


# ---- COLMAP -----------------------------------------------------------------------------------------

def _load_colmap(root: str, factor: int, undistort: bool):
    model_dir = find_model_dir(root)
    model = read_model(model_dir)
    if not all(c.is_pinhole for c in model.cameras.values()):
        if not undistort:
            raise ColmapError(f"{model_dir}: distorted camera models "
                              f"{sorted({c.model for c in model.cameras.values() if not c.is_pinhole})}; pass undistort=True")
        root = _undistorted(root, model_dir)
        model_dir = find_model_dir(root)
        model = read_model(model_dir)
    points_file = os.path.join(model_dir, "points3D.bin" if os.path.exists(os.path.join(model_dir, "points3D.bin")) else "points3D.txt")
    if len(model.points.ids) == 0:
        raise ColmapError(f"{points_file}: the model has zero 3D points (nothing to initialise Gaussians from)")
    image_dir = os.path.join(root, "images")
    for im in model.images.values():
        p = os.path.join(image_dir, im.name)
        if not os.path.exists(p):
            raise FileNotFoundError(f"{p}: image {im.name!r} is listed in {model_dir} but missing on disk")
    src_dir = image_dir
    scaled_dir = os.path.join(root, f"images_{factor}")
    if factor > 1 and os.path.isdir(scaled_dir):
        src_dir = scaled_dir
    views = []
    for im in model.images.values():
        cam = model.cameras[im.camera_id]
        w, h = cam.width // factor if factor > 1 else cam.width, cam.height // factor if factor > 1 else cam.height
        fx, fy, cx, cy = cam.intrinsics()
        sx, sy = w / cam.width, h / cam.height
        K = torch.tensor([[fx * sx, 0, cx * sx], [0, fy * sy, cy * sy], [0, 0, 1]], dtype=torch.float32)
        img_path = _find_image(src_dir, im.name) if src_dir != image_dir else os.path.join(image_dir, im.name)
        if img_path is None:  # images_N/ lacks this one: resize the original
            img_path = os.path.join(image_dir, im.name)
        views.append(View(im.name, w, h, K, torch.tensor(im.world_to_camera(), dtype=torch.float32), img_path))
    pts = torch.tensor(model.points.xyz, dtype=torch.float32)
    rgb = torch.tensor(model.points.rgb, dtype=torch.float32) / 255.0
    return views, pts, rgb


def _find_image(folder: str, name: str) -> str | None:
    """images_N/ sometimes holds PNGs for JPEG originals: match by stem."""
    p = os.path.join(folder, name)
    if os.path.exists(p):
        return p
    stem = os.path.splitext(name)[0]
    for ext in IMAGE_EXTS:
        if os.path.exists(os.path.join(folder, stem + ext)):
            return os.path.join(folder, stem + ext)
    return None


def _undistorted(root: str, model_dir: str) -> str:
    """Undistorts a non-pinhole COLMAP scene once with pycolmap (cached) and returns the new root."""
    import pycolmap

    key = hashlib.sha1((os.path.abspath(model_dir) + str(os.path.getmtime(model_dir))).encode()).hexdigest()[:16]
    out = cache_dir("undistorted", key)
    if not os.path.exists(os.path.join(out, "done")):
        print(f"[gsplat_kit] undistorting {root} with pycolmap -> {out}")
        pycolmap.undistort_images(out, model_dir, os.path.join(root, "images"))
        # pycolmap writes sparse/ directly; make it the usual sparse/0 layout
        if os.path.exists(os.path.join(out, "sparse", "cameras.bin")):
            os.makedirs(os.path.join(out, "sparse", "0"), exist_ok=True)
            for f in ("cameras.bin", "images.bin", "points3D.bin"):
                os.replace(os.path.join(out, "sparse", f), os.path.join(out, "sparse", "0", f))
        open(os.path.join(out, "done"), "w").close()
    return out


# ---- transforms.json (NeRF-synthetic / instant-ngp) -------------------------------------------------

def _load_transforms(root: str, fname: str, factor: int, white_background: bool):
    views = []
    bg = torch.ones(3) if white_background else torch.zeros(3)
    # All frames go into one pool, split every test_every-th by name like COLMAP scenes. (A
    # transforms_test.json whose images are not on disk, as in ../shared/data's lego, is ignored.)
    files = [fname]
    test_json = os.path.join(root, "transforms_test.json")
    if fname == "transforms_train.json" and os.path.exists(test_json):
        with open(test_json) as fh:
            first = (json.load(fh).get("frames") or [{}])[0].get("file_path", "")
        if _frame_image(root, first) is not None:
            files.append("transforms_test.json")
    for f in files:
        meta_path = os.path.join(root, f)
        try:
            with open(meta_path) as fh:
                meta = json.load(fh)
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta_path}: not valid JSON ({e})") from None
        frames = meta.get("frames")
        if not frames:
            raise ValueError(f"{meta_path}: no 'frames'")
        for i, fr in enumerate(frames):
            if not isinstance(fr, dict) or "file_path" not in fr or "transform_matrix" not in fr:
                raise ValueError(f"{meta_path}: frame {i} needs 'file_path' and 'transform_matrix'")
            img_path = _frame_image(root, fr["file_path"])
            if img_path is None:
                raise FileNotFoundError(f"{os.path.join(root, fr['file_path'])}: frame {i} of {meta_path} is missing on disk")
            w0, h0 = _frame_size(meta, fr, img_path)
            w, h = w0 // factor, h0 // factor
            fx, fy, cx, cy = _frame_intrinsics(meta, fr, w0, h0, meta_path)
            s = w / w0
            K = torch.tensor([[fx * s, 0, cx * s], [0, fy * h / h0, cy * h / h0], [0, 0, 1]], dtype=torch.float32)
            try:
                c2w = np.array(fr["transform_matrix"], dtype=np.float64).reshape(4, 4)
            except (ValueError, TypeError):
                raise ValueError(f"{meta_path}: frame {i}: transform_matrix is not a 4x4 matrix") from None
            c2w[:3, 1:3] *= -1  # Blender/OpenGL (y up, z back) -> OpenCV (y down, z forward)
            dist = tuple(float(fr.get(k, meta.get(k, 0.0))) for k in ("k1", "k2", "p1", "p2"))  # per frame wins
            name = os.path.relpath(img_path, root)
            views.append(View(name, w, h, K, torch.tensor(np.linalg.inv(c2w), dtype=torch.float32), img_path,
                              background=bg, distortion=dist if any(dist) else None))
    # No SfM points in these scenes: 100k random points in a cube around the origin that the cameras
    # look at, as 3DGS does (its half-size 1.3 for NeRF-synthetic's cameras at radius ~4).
    g = np.random.default_rng(0)
    centres = np.stack([v.camtoworld[:3, 3].numpy() for v in views])
    half = 0.33 * float(np.linalg.norm(centres, axis=1).mean())
    pts = (g.random((100_000, 3)) * 2 - 1) * half
    rgb = g.random((100_000, 3))
    return views, torch.tensor(pts, dtype=torch.float32), torch.tensor(rgb, dtype=torch.float32), bg


def _frame_image(root, file_path):
    p = os.path.join(root, file_path)
    if os.path.exists(p):
        return p
    for ext in IMAGE_EXTS:
        if os.path.exists(p + ext):
            return p + ext
    return None


def _frame_size(meta, fr, img_path):
    w, h = fr.get("w", meta.get("w")), fr.get("h", meta.get("h"))
    if w and h:
        return int(w), int(h)
    with PILImage.open(img_path) as im:
        return im.size


def _frame_intrinsics(meta, fr, w, h, meta_path="transforms json"):
    get = lambda k: fr.get(k, meta.get(k))
    if get("fl_x"):
        fx = float(get("fl_x"))
        fy = float(get("fl_y") or fx)
    elif get("camera_angle_x"):
        fx = 0.5 * w / math.tan(0.5 * float(get("camera_angle_x")))
        fy = 0.5 * h / math.tan(0.5 * float(get("camera_angle_y"))) if get("camera_angle_y") else fx
    else:
        raise ValueError(f"{meta_path}: no focal length (fl_x or camera_angle_x)")
    cx = float(get("cx")) if get("cx") is not None else w / 2
    cy = float(get("cy")) if get("cy") is not None else h / 2
    return fx, fy, cx, cy


# ---- images -----------------------------------------------------------------------------------------

def _load_rgb(path, width, height, background, distortion, K) -> torch.Tensor:
    with PILImage.open(path) as im:
        im.load()
        if im.size != (width, height):
            im = _resized_cached(path, im, width, height)
        arr = np.asarray(im.convert("RGBA") if im.mode in ("RGBA", "LA", "P") else im.convert("RGB"), dtype=np.float32) / 255.0
    img = torch.from_numpy(arr.copy())
    if img.shape[-1] == 4:
        bg = background if background is not None else torch.zeros(3)
        img = img[..., :3] * img[..., 3:] + bg * (1 - img[..., 3:])
    if distortion is not None:
        img = undistort_image(img, K, distortion)
    return img.contiguous()


def _resized_cached(path, im, width, height):
    """Resizes once (Lanczos) and keeps the result in the cache: the next run reads it directly."""
    key = hashlib.sha1(f"{os.path.abspath(path)}:{os.path.getmtime(path)}:{width}x{height}".encode()).hexdigest()[:20]
    cached = os.path.join(cache_dir("resized"), key + ".png")
    if os.path.exists(cached):
        out = PILImage.open(cached)
        out.load()
        return out
    out = im.resize((width, height), PILImage.LANCZOS)
    tmp = cached + f".tmp{os.getpid()}.png"
    out.save(tmp)
    os.replace(tmp, cached)
    return out


def undistort_image(img: torch.Tensor, K: torch.Tensor, dist: tuple) -> torch.Tensor:
    """Undoes OPENCV radial-tangential distortion (k1, k2, p1, p2) for the same pinhole K (bilinear)."""
    k1, k2, p1, p2 = dist
    H, W = img.shape[:2]
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    x, y = (xs + 0.5 - cx) / fx, (ys + 0.5 - cy) / fy
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 * r2
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    u, v = xd * fx + cx, yd * fy + cy  # where each undistorted pixel is found in the distorted image
    grid = torch.stack([u / W * 2 - 1, v / H * 2 - 1], -1)[None].float()
    out = torch.nn.functional.grid_sample(img.permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode="border",
                                          align_corners=False)
    return out[0].permute(1, 2, 0)
