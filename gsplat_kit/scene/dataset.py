"""Scenes for training: posed views and an initial point cloud, from a COLMAP folder (images/ +
sparse/0/) or a transforms*.json folder (NeRF-synthetic's Blender convention, instant-ngp's with OPENCV
distortion, nerfstudio's with masks and initial points: gsplat_kit.scene.transforms).

Cameras are pinhole and in OpenCV's convention (x right, y down, z forward). Distorted COLMAP models
are undistorted once through pycolmap; downscaled images come from images_N/ when present, else are
downscaled once and cached (gsplat_kit.scene.images, under $GSPLAT_KIT_CACHE, default
~/.cache/gsplat_kit). Every image's size is checked against its camera when the scene is loaded: a
different size with the same aspect ratio is resized with a warning, any other is refused.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from gsplat_kit.common.errors import UserError
from gsplat_kit.common.paths import inside
from gsplat_kit.scene.colmap import ColmapError, find_model_dir, read_model
from gsplat_kit.scene.images import (IMAGE_EXTS, ImageError, cache_dir, image_size, read_scaled,
                                     to_float_rgb)

# relative difference of aspect ratios (width / height) still taken for the same picture, resized
ASPECT_TOLERANCE = 0.01


class DatasetError(UserError):
    """A scene folder or transforms*.json that cannot be used; the message names the file and field."""


@dataclass
class View:
    name: str
    width: int
    height: int
    K: torch.Tensor          # [3, 3] float32
    viewmat: torch.Tensor    # [4, 4] world-to-camera (OpenCV)
    image_path: str
    background: torch.Tensor | None = None          # RGB used to composite RGBA images
    distortion: tuple | None = None                 # OPENCV (k1, k2, p1, p2[, k3]) or fisheye (k1..k4) to undo
    fisheye: bool = False                           # distortion is OPENCV_FISHEYE's
    mask_path: str | None = None                    # pixels where the mask is 0 are left out of the loss
    oriented: bool = True                           # apply the image's EXIF orientation when decoding
    _image: torch.Tensor | None = field(default=None, repr=False)
    _mask: torch.Tensor | None = field(default=None, repr=False)

    @property
    def camtoworld(self) -> torch.Tensor:
        return torch.linalg.inv(self.viewmat.double()).float()

    def load_image(self) -> torch.Tensor:
        """[H, W, 3] float32 in [0, 1], loaded on first use and kept."""
        if self._image is None:
            img = read_scaled(self.image_path, self.width, self.height, oriented=self.oriented)
            img = torch.from_numpy(to_float_rgb(img, self.background))
            self._image = self._undistorted(img)
        return self._image

    def load_mask(self) -> torch.Tensor | None:
        """[H, W] float32 in [0, 1] (1 = the pixel counts), or None when the view has no mask."""
        if self.mask_path is None:
            return None
        if self._mask is None:
            m = torch.from_numpy(read_scaled(self.mask_path, self.width, self.height, mask=True))
            self._mask = self._undistorted(m[..., None])[..., 0]
        return self._mask

    def _undistorted(self, img: torch.Tensor) -> torch.Tensor:
        if self.distortion is not None:
            img = undistort_image(img, self.K, self.distortion, self.fisheye)
        return img.contiguous()


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
        from gsplat_kit.scene.transforms import load_transforms

        views, points, rgb, bg = load_transforms(path, jsons[0], data_factor, white_background)
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


# ---- checks shared by the loaders ------------------------------------------------------------------

def confined(root: str, rel: str, what: str, error: type[UserError]):
    """gsplat_kit.common.paths.inside, raising the calling reader's own error class."""
    try:
        return inside(root, rel, what)
    except UserError as e:
        raise error(str(e)) from None


def check_image_size(path: str, actual: tuple[int, int], full: tuple[int, int], factor: int, scaled: bool,
                     resized: list, exact: tuple[int, int] | None = None) -> tuple[int, int]:
    """The (width, height) a view gets from the image `path` of size `actual`, whose camera sees
    `full` at factor 1. `scaled`: the image comes from images_N/, so it should be `full` / factor
    (any rounding). A size that matches neither but has the camera's aspect ratio is resized (and
    listed in `resized` for one warning); another aspect ratio is refused. `exact` forces the result
    (a mask takes its image's size)."""
    (aw, ah), (fw, fh) = actual, full
    ew, eh = (fw / factor, fh / factor) if scaled else (fw, fh)
    target = (fw // factor, fh // factor)
    if abs(aw - ew) < 1 and abs(ah - eh) < 1:
        if scaled:
            target = (aw, ah)
    elif abs((aw / ah) / (fw / fh) - 1) <= ASPECT_TOLERANCE:
        resized.append(f"{path}: {aw}x{ah}, camera {round(ew)}x{round(eh)}")
    else:
        raise ImageError(f"{path}: the image is {aw}x{ah} but its camera is {fw}x{fh}"
                         f"{f' (/{factor} = {ew:g}x{eh:g} in this folder)' if scaled else ''}: the aspect ratios "
                         f"differ, so it is not the picture the camera describes")
    if min(target) < 1:
        raise ImageError(f"{path}: {fw}x{fh} at data factor {factor} leaves no pixels")
    return exact or target


def warn_resized(resized: list):
    if resized:
        warnings.warn(f"{len(resized)} image(s) differ in size from their cameras, with the same aspect ratio: "
                      f"resized to fit (e.g. {resized[0]})", stacklevel=3)


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
    ext = ".bin" if os.path.exists(os.path.join(model_dir, "points3D.bin")) else ".txt"
    points_file, images_file = (os.path.join(model_dir, f + ext) for f in ("points3D", "images"))
    if len(model.points.ids) == 0:
        raise ColmapError(f"{points_file}: the model has zero 3D points (nothing to initialise Gaussians from)")
    image_dir = os.path.join(root, "images")
    sources = {}
    for im in model.images.values():
        what = f"{images_file}: image {im.id} name"
        p = confined(image_dir, im.name, what, ColmapError)
        if not p.is_file():
            raise FileNotFoundError(f"{os.path.join(image_dir, im.name)}: image {im.name!r} is listed in {model_dir} "
                                    f"but missing on disk")
        scaled = _find_image(os.path.join(root, f"images_{factor}"), im.name, what) if factor > 1 else None
        sources[im.id] = (str(p), scaled)
    views, resized = [], []
    for im in model.images.values():
        cam = model.cameras[im.camera_id]
        full, scaled = sources[im.id]
        src = scaled or full
        size, oriented = image_size(src), True
        if size != image_size(src, oriented=False) and _fits(image_size(src, oriented=False), cam, factor):
            size, oriented = image_size(src, oriented=False), False  # the model was made from the stored pixels
        w, h = check_image_size(src, size, (cam.width, cam.height), factor, scaled is not None, resized)
        fx, fy, cx, cy = cam.intrinsics()
        sx, sy = w / cam.width, h / cam.height
        K = torch.tensor([[fx * sx, 0, cx * sx], [0, fy * sy, cy * sy], [0, 0, 1]], dtype=torch.float32)
        views.append(View(im.name, w, h, K, torch.tensor(im.world_to_camera(), dtype=torch.float32), src,
                          oriented=oriented))
    warn_resized(resized)
    pts = torch.tensor(model.points.xyz, dtype=torch.float32)
    rgb = torch.tensor(model.points.rgb, dtype=torch.float32) / 255.0
    return views, pts, rgb


def _fits(size: tuple[int, int], cam, factor: int) -> bool:
    """Whether `size` is the camera's at 1 or at 1/factor (any rounding)."""
    return any(abs(size[0] - cam.width / f) < 1 and abs(size[1] - cam.height / f) < 1 for f in {1, factor})


def _find_image(folder: str, name: str, what: str) -> str | None:
    """`name` in images_N/, which sometimes holds PNGs for JPEG originals (matched by stem)."""
    if not os.path.isdir(folder):
        return None
    stem, _ = os.path.splitext(name)
    for candidate in (name, *(stem + ext for ext in IMAGE_EXTS)):
        p = confined(folder, candidate, what, ColmapError)
        if p.is_file():
            return str(p)
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


# ---- distortion -------------------------------------------------------------------------------------

def undistort_image(img: torch.Tensor, K: torch.Tensor, dist: tuple, fisheye: bool = False) -> torch.Tensor:
    """Undoes OPENCV radial-tangential distortion (k1, k2, p1, p2[, k3]) or OPENCV_FISHEYE's equidistant
    one (k1..k4) for the same pinhole K (bilinear; pixel centres at +0.5 as COLMAP)."""
    H, W = img.shape[:2]
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    x, y = (xs + 0.5 - cx) / fx, (ys + 0.5 - cy) / fy
    r2 = x * x + y * y
    if fisheye:
        k1, k2, k3, k4 = dist
        r = r2.sqrt()
        theta = torch.atan(r)
        t2 = theta * theta
        theta_d = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))
        s = torch.where(r > 1e-12, theta_d / r.clamp_min(1e-12), torch.ones_like(r))
        xd, yd = x * s, y * s
    else:
        k1, k2, p1, p2 = dist[:4]
        k3 = dist[4] if len(dist) > 4 else 0.0
        radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    u, v = xd * fx + cx, yd * fy + cy  # where each undistorted pixel is found in the distorted image
    grid = torch.stack([u / W * 2 - 1, v / H * 2 - 1], -1)[None].float()
    out = torch.nn.functional.grid_sample(img.permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode="border",
                                          align_corners=False)
    return out[0].permute(1, 2, 0)
