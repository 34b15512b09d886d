"""Image I/O for the datasets, through OpenCV: decoding (EXIF orientation honoured), area-interpolated
downscaling into the images_N cache, colour conversions, masks. Every failure is an `ImageError`
naming the file.

PIL is used for one thing OpenCV cannot do: reading an image's size from its header alone, so a scene
checks all its image sizes against its cameras without decoding a pixel.
"""
from __future__ import annotations

import hashlib
import os

import cv2
import numpy as np

from gsplat_kit.common.atomic import write_bytes
from gsplat_kit.common.errors import UserError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".JPG", ".JPEG", ".PNG")
# Refused before decoding: 2^28 pixels (16384 x 16384) is 1 GiB as 8-bit RGBA, far beyond any photo a
# splatting scene uses, and a header claiming more is how a small file asks for a huge allocation.
MAX_PIXELS = 1 << 28
_JPEG_MAGIC = b"\xff\xd8"


class ImageError(UserError):
    """An image (or mask) file that cannot be decoded or does not fit its camera."""


def cache_dir(*parts: str) -> str:
    d = os.path.join(os.environ.get("GSPLAT_KIT_CACHE", os.path.expanduser("~/.cache/gsplat_kit")), *parts)
    os.makedirs(d, exist_ok=True)
    return d


def image_size(path: str, oriented: bool = True) -> tuple[int, int]:
    """(width, height) as the image will be decoded (EXIF rotations swap them unless `oriented` is
    False), from the header only."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as im:
            w, h = im.size
            if oriented and im.format == "JPEG" and im.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                w, h = h, w
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, struct.error...) for bad headers
        detail = " ".join(str(e).replace(repr(str(path)), "the file").replace(str(path), "the file").split())
        raise ImageError(f"{path}: not a readable image ({type(e).__name__}: {detail[:160]})") from None
    if w <= 0 or h <= 0:
        raise ImageError(f"{path}: image header gives size {w}x{h}")
    if w * h > MAX_PIXELS:
        raise ImageError(f"{path}: image header claims {w}x{h} pixels, more than the {MAX_PIXELS:,} allowed")
    return w, h


def read_image(path: str, oriented: bool = True) -> np.ndarray:
    """[H, W, 3] RGB or [H, W, 4] RGBA, uint8 or uint16 as stored. JPEGs are decoded with their EXIF
    orientation applied (OpenCV's IMREAD_COLOR does so) unless `oriented` is False (a COLMAP model made
    from the stored pixels); other formats keep alpha and bit depth."""
    data = _read_bytes(path)
    image_size(path)  # refuses huge or broken headers before the decoder allocates anything
    flags = cv2.IMREAD_COLOR if data[:2] == _JPEG_MAGIC else cv2.IMREAD_UNCHANGED
    if not oriented:
        flags |= cv2.IMREAD_IGNORE_ORIENTATION
    arr = _decode(path, data, flags)
    if arr.ndim == 2:
        arr = cv2.cvtColor(arr, cv2.COLOR_GRAY2RGB)
    elif arr.shape[2] == 4:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
    elif arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    else:
        raise ImageError(f"{path}: {arr.shape[2]} channels; expected grey, RGB or RGBA")
    if arr.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{path}: pixel type {arr.dtype} (expected 8- or 16-bit integers)")
    return arr


def read_mask(path: str) -> np.ndarray:
    """[H, W] float32 in [0, 1]: 1 where pixels count, 0 where they are masked out (nerfstudio's
    convention: white = keep). A colour mask counts by its red channel, one with alpha by its alpha."""
    data = _read_bytes(path)
    image_size(path)
    arr = _decode(path, data, cv2.IMREAD_UNCHANGED)
    if arr.ndim == 3:  # OpenCV's channel order is BGR(A): index 2 is red
        arr = arr[..., 3] if arr.shape[2] == 4 else arr[..., 2]
    if arr.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{path}: mask pixel type {arr.dtype} (expected 8- or 16-bit integers)")
    return arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)


def resize(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area interpolation when shrinking (the right filter for decimation: no aliasing, no ringing),
    bicubic when enlarging."""
    if arr.shape[1] == width and arr.shape[0] == height:
        return arr
    shrink = width <= arr.shape[1] and height <= arr.shape[0]
    return cv2.resize(arr, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def read_scaled(path: str, width: int, height: int, mask: bool = False, oriented: bool = True) -> np.ndarray:
    """The image (or mask) at `width` x `height`: decoded directly when it has that size, else
    downscaled once and kept in the images_N cache (a lossless PNG under $GSPLAT_KIT_CACHE), which the
    next read decodes directly."""
    read = read_mask if mask else (lambda p: read_image(p, oriented))
    if image_size(path, oriented and not mask) == (width, height):
        return read(path)
    st = os.stat(path)
    key = hashlib.sha1(f"{os.path.abspath(path)}:{st.st_mtime_ns}:{st.st_size}:{width}x{height}:{mask}:{oriented}"
                       .encode())
    cached = os.path.join(cache_dir("resized"), key.hexdigest()[:24] + ".png")
    if os.path.exists(cached):
        try:
            return read(cached)
        except ImageError:
            pass  # a damaged cache entry is rebuilt below
    src = read(path)
    out = resize(src, width, height)
    store = (out * 65535.0 + 0.5).astype(np.uint16) if mask else out
    if store.ndim == 3:
        store = cv2.cvtColor(store, cv2.COLOR_RGBA2BGRA if store.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", store)
    if ok:
        write_bytes(cached, buf.tobytes())
    return out


def to_float_rgb(arr: np.ndarray, background=None) -> np.ndarray:
    """[H, W, 3] float32 in [0, 1]; RGBA is composited over `background` (RGB, default black)."""
    img = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    if img.shape[2] == 4:
        bg = np.zeros(3, np.float32) if background is None else np.asarray(background, np.float32).reshape(3)
        img = img[..., :3] * img[..., 3:] + bg * (1.0 - img[..., 3:])
    return np.ascontiguousarray(img)


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise ImageError(f"{path}: empty file")
    return data


def _decode(path: str, data: bytes, flags: int) -> np.ndarray:
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as e:
        raise ImageError(f"{path}: not decodable ({' '.join(str(e).split())[-160:]})") from None
    if arr is None or arr.size == 0:
        raise ImageError(f"{path}: not decodable (corrupt, truncated, or not an image file)")
    return arr
