"""COLMAP sparse models: cameras, images and points3D, in binary and text form, read and written.

Every COLMAP camera model is read (its parameters kept as COLMAP orders them). Bad files raise
`ColmapError` naming the file and what is wrong (truncated, unknown model, dangling camera id, a focal
length that is not positive, a pose or point that is not finite, a count the file cannot hold...);
counts are checked against the bytes left before anything is allocated.
"""
from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field

import numpy as np

from gsplat_kit.common.atomic import write_bytes
from gsplat_kit.common.errors import UserError

# id -> (name, number of parameters), as in COLMAP's src/colmap/sensor/models.h
CAMERA_MODELS = {
    0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5), 4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5), 8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12), 11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
    12: ("SIMPLE_DIVISION", 4), 13: ("DIVISION", 5), 14: ("SIMPLE_FISHEYE", 3), 15: ("FISHEYE", 4),
    16: ("EUCM", 6), 17: ("EQUIRECTANGULAR", 2),
}
# models whose parameters start with one focal length (f, cx, cy, ...); the others start fx, fy, cx, cy
_SINGLE_FOCAL = {"SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE",
                 "SIMPLE_DIVISION", "SIMPLE_FISHEYE"}
MODEL_IDS = {name: (i, n) for i, (name, n) in CAMERA_MODELS.items()}
MAX_IMAGE_SIDE = 1 << 20
# smallest record of each binary file, to bound a header's count by the bytes that follow it
_MIN_RECORD = {"cameras": 4 + 4 + 8 + 8 + 8, "images": 4 + 7 * 8 + 4 + 1 + 8, "points": 8 + 3 * 8 + 3 + 8 + 8}


class ColmapError(UserError):
    """A COLMAP model that cannot be read or that contradicts itself."""


@dataclass
class Camera:
    id: int
    model: str
    width: int
    height: int
    params: np.ndarray  # float64, COLMAP's order for the model

    def intrinsics(self) -> tuple[float, float, float, float]:
        """fx, fy, cx, cy of the model's pinhole part."""
        p = self.params
        if self.model == "EQUIRECTANGULAR":
            raise ColmapError(f"camera {self.id}: EQUIRECTANGULAR has no pinhole intrinsics")
        if self.model in _SINGLE_FOCAL:
            return float(p[0]), float(p[0]), float(p[1]), float(p[2])
        return float(p[0]), float(p[1]), float(p[2]), float(p[3])

    @property
    def is_pinhole(self) -> bool:
        return self.model in ("SIMPLE_PINHOLE", "PINHOLE")


@dataclass
class Image:
    id: int
    qvec: np.ndarray      # (w, x, y, z) world-to-camera rotation
    tvec: np.ndarray      # world-to-camera translation
    camera_id: int
    name: str
    xys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    point3D_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))

    def rotation(self) -> np.ndarray:
        w, x, y, z = self.qvec / np.linalg.norm(self.qvec)
        return np.array([
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ])

    def world_to_camera(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = self.rotation()
        m[:3, 3] = self.tvec
        return m


@dataclass
class Points3D:
    ids: np.ndarray      # [P] int64
    xyz: np.ndarray      # [P, 3] float64
    rgb: np.ndarray      # [P, 3] uint8
    errors: np.ndarray   # [P] float64
    tracks: list | None = None  # per point, [L, 2] int64 (image_id, point2D_idx); None when not read

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Model:
    cameras: dict[int, Camera]
    images: dict[int, Image]
    points: Points3D


# ---- validation (both encodings) -------------------------------------------------------------------

def _check_camera(cam: Camera, where: str) -> Camera:
    if not (0 < cam.width <= MAX_IMAGE_SIDE and 0 < cam.height <= MAX_IMAGE_SIDE):
        raise ColmapError(f"{where}: camera {cam.id} has size {cam.width}x{cam.height}; width and height must be "
                          f"positive (at most {MAX_IMAGE_SIDE})")
    if not np.isfinite(cam.params).all():
        raise ColmapError(f"{where}: camera {cam.id} ({cam.model}) has non-finite parameters {cam.params.tolist()}")
    if cam.model != "EQUIRECTANGULAR":
        fx, fy, _, _ = cam.intrinsics()
        if fx <= 0 or fy <= 0:
            raise ColmapError(f"{where}: camera {cam.id} ({cam.model}) has focal length {fx:g}, {fy:g}; it must be "
                              f"positive")
    return cam


def _check_image(im: Image, where: str) -> Image:
    if not (np.isfinite(im.qvec).all() and np.isfinite(im.tvec).all()):
        raise ColmapError(f"{where}: image {im.id} ({im.name!r}) has a non-finite pose (q {im.qvec.tolist()}, "
                          f"t {im.tvec.tolist()})")
    if np.linalg.norm(im.qvec) < 1e-12:
        raise ColmapError(f"{where}: image {im.id} ({im.name!r}) has a zero rotation quaternion")
    if not im.name:
        raise ColmapError(f"{where}: image {im.id} has an empty name")
    return im


def _check_points(pts: Points3D, where: str) -> Points3D:
    bad = ~np.isfinite(pts.xyz).all(1)
    if bad.any():
        raise ColmapError(f"{where}: point {int(pts.ids[np.argmax(bad)])} has a non-finite position")
    return pts


def _add(table: dict, key: int, value, where: str, what: str):
    if key in table:
        raise ColmapError(f"{where}: {what} id {key} appears twice")
    table[key] = value


# ---- binary ---------------------------------------------------------------------------------------

class _Reader:
    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            self.data = f.read()
        self.pos = 0

    def take(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise ColmapError(f"{self.path}: truncated binary file ({len(self.data)} bytes, needed more at byte {self.pos})")
        out = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return out

    def take_array(self, dtype, count: int):
        dt = np.dtype(dtype).newbyteorder("<")
        size = dt.itemsize * count
        if self.pos + size > len(self.data):
            raise ColmapError(f"{self.path}: truncated binary file ({len(self.data)} bytes, needed {self.pos + size})")
        out = np.frombuffer(self.data, dt, count, self.pos)
        self.pos += size
        return out

    def take_count(self, what: str) -> int:
        """A record count from the header, refused when the bytes left cannot hold that many records."""
        n = self.take("Q")[0]
        left = len(self.data) - self.pos
        if n * _MIN_RECORD[what] > left:
            raise ColmapError(f"{self.path}: the header claims {n:,} {what}, but the {left:,} bytes that follow "
                              f"can hold at most {left // _MIN_RECORD[what]:,} (truncated or corrupt)")
        return n

    def check_end(self, what: str):
        if self.pos != len(self.data):
            raise ColmapError(f"{self.path}: {len(self.data) - self.pos} bytes left over after the {what} its "
                              f"header announces (corrupt, or not this kind of COLMAP file)")

    def take_string(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise ColmapError(f"{self.path}: truncated binary file (unterminated image name)")
        try:
            s = self.data[self.pos:end].decode("utf-8")
        except UnicodeDecodeError as e:
            raise ColmapError(f"{self.path}: image name at byte {self.pos} is not UTF-8 ({e.reason})") from None
        self.pos = end + 1
        return s


def read_cameras_binary(path) -> dict[int, Camera]:
    r = _Reader(path)
    cams = {}
    for _ in range(r.take_count("cameras")):
        cid, model_id, w, h = r.take("iiQQ")
        if model_id not in CAMERA_MODELS:
            raise ColmapError(f"{path}: camera {cid} has unknown model id {model_id}")
        name, n = CAMERA_MODELS[model_id]
        cam = Camera(cid, name, int(w), int(h), np.array(r.take_array(np.float64, n)))
        _add(cams, cid, _check_camera(cam, path), path, "camera")
    r.check_end("cameras")
    return cams


def read_images_binary(path) -> dict[int, Image]:
    r = _Reader(path)
    images = {}
    for _ in range(r.take_count("images")):
        iid, qw, qx, qy, qz, tx, ty, tz, cid = r.take("idddddddi")
        name = r.take_string()
        n2d = r.take("Q")[0]
        rec = r.take_array(np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")]), n2d)
        im = Image(iid, np.array([qw, qx, qy, qz]), np.array([tx, ty, tz]), cid, name,
                   np.stack([rec["x"], rec["y"]], -1), rec["id"].copy())
        _add(images, iid, _check_image(im, path), path, "image")
    r.check_end("images")
    return images


def read_points3D_binary(path) -> Points3D:
    r = _Reader(path)
    n = r.take_count("points")
    ids, xyz, rgb, err = np.zeros(n, np.int64), np.zeros((n, 3)), np.zeros((n, 3), np.uint8), np.zeros(n)
    tracks = []
    for i in range(n):
        pid, x, y, z, cr, cg, cb, e = r.take("qdddBBBd")  # ids are uint64 in COLMAP; all fit in 63 bits
        track_len = r.take("Q")[0]
        tracks.append(r.take_array(np.int32, 2 * track_len).reshape(-1, 2).astype(np.int64))
        ids[i], xyz[i], rgb[i], err[i] = pid, (x, y, z), (cr, cg, cb), e
    r.check_end("points")
    return _check_points(Points3D(ids, xyz, rgb, err, tracks), path)


def write_cameras_binary(cams: dict[int, Camera], path):
    out = [struct.pack("<Q", len(cams))]
    for c in cams.values():
        mid, n = MODEL_IDS[c.model]
        out.append(struct.pack("<iiQQ", c.id, mid, c.width, c.height) + np.asarray(c.params, "<f8").tobytes())
    write_bytes(path, b"".join(out))


def write_images_binary(images: dict[int, Image], path):
    out = [struct.pack("<Q", len(images))]
    for im in images.values():
        out.append(struct.pack("<idddddddi", im.id, *im.qvec, *im.tvec, im.camera_id))
        out.append(im.name.encode() + b"\0")
        out.append(struct.pack("<Q", len(im.xys)))
        rec = np.zeros(len(im.xys), np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")]))
        rec["x"], rec["y"], rec["id"] = im.xys[:, 0], im.xys[:, 1], im.point3D_ids
        out.append(rec.tobytes())
    write_bytes(path, b"".join(out))


def write_points3D_binary(points: Points3D, path):
    out = [struct.pack("<Q", len(points.ids))]
    for i in range(len(points.ids)):
        tr = _track(points, i)
        out.append(struct.pack("<QdddBBBdQ", int(points.ids[i]), *points.xyz[i], *map(int, points.rgb[i]),
                               float(points.errors[i]), len(tr)))
        out.append(np.asarray(tr, "<i4").tobytes())
    write_bytes(path, b"".join(out))


# ---- text -----------------------------------------------------------------------------------------

def _read_text(path) -> list[str]:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ColmapError(f"{path}:{line}: not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r})") from None


def _text_lines(path):
    for lineno, line in enumerate(_read_text(path), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            yield lineno, line


_COUNT_COMMENT = re.compile(r"#\s*Number of (cameras|images|points)\s*:\s*(\d+)")


def _check_count(path, what: str, found: int):
    """COLMAP's text writer states each file's count in a header comment: a file cut short at a line
    boundary still parses, so the stated count is what tells it apart."""
    for line in _read_text(path)[:10]:
        m = _COUNT_COMMENT.match(line.strip())
        if m and m.group(1) == what and int(m.group(2)) != found:
            raise ColmapError(f"{path}: its header states {int(m.group(2)):,} {what} but it holds {found:,} "
                              f"(truncated or edited)")


def read_cameras_text(path) -> dict[int, Camera]:
    cams = {}
    for lineno, line in _text_lines(path):
        parts = line.split()
        try:
            cid, model, w, h = int(parts[0]), parts[1], int(parts[2]), int(parts[3])
            if model not in MODEL_IDS:
                raise ColmapError(f"{path}:{lineno}: unknown camera model {model!r}")
            params = np.array([float(v) for v in parts[4:]])
        except (IndexError, ValueError) as e:
            if isinstance(e, ColmapError):
                raise
            raise ColmapError(f"{path}:{lineno}: malformed camera line ({e})") from None
        if len(params) != MODEL_IDS[model][1]:
            raise ColmapError(f"{path}:{lineno}: {model} takes {MODEL_IDS[model][1]} parameters, got {len(params)}")
        _add(cams, cid, _check_camera(Camera(cid, model, w, h, params), f"{path}:{lineno}"), path, "camera")
    _check_count(path, "cameras", len(cams))
    return cams


def read_images_text(path) -> dict[int, Image]:
    images = {}
    # Each image is two lines and the second (its 2D points) may be empty: keep blank lines for pairing.
    raw = [l for l in _read_text(path) if not l.startswith("#")]
    i = 0
    while i < len(raw):
        head = raw[i].split()
        if not head:
            i += 1
            continue
        try:
            iid = int(head[0])
            q = np.array([float(v) for v in head[1:5]])
            t = np.array([float(v) for v in head[5:8]])
            cid, name = int(head[8]), " ".join(head[9:])
        except (IndexError, ValueError) as e:
            raise ColmapError(f"{path}: malformed image line {raw[i]!r} ({e})") from None
        pts = raw[i + 1].split() if i + 1 < len(raw) else []
        try:
            arr = np.array([float(v) for v in pts]).reshape(-1, 3) if pts else np.zeros((0, 3))
        except ValueError as e:
            raise ColmapError(f"{path}: malformed 2D points of image {iid} ({e})") from None
        if not (np.isfinite(arr).all() and (np.abs(arr[:, 2]) < 2 ** 63).all()):
            raise ColmapError(f"{path}: 2D points of image {iid} hold non-finite or out-of-range values")
        _add(images, iid, _check_image(Image(iid, q, t, cid, name, arr[:, :2], arr[:, 2].astype(np.int64)), path),
             path, "image")
        i += 2
    _check_count(path, "images", len(images))
    return images


def read_points3D_text(path) -> Points3D:
    ids, xyz, rgb, err, tracks = [], [], [], [], []
    for lineno, line in _text_lines(path):
        p = line.split()
        try:
            ids.append(int(p[0]))
            xyz.append([float(v) for v in p[1:4]])
            rgb.append([int(v) for v in p[4:7]])
            if len(rgb[-1]) != 3 or not all(0 <= c <= 255 for c in rgb[-1]):
                raise ValueError(f"colour {p[4:7]} is not three values in 0..255")
            err.append(float(p[7]))
            if len(p) % 2:
                raise ValueError("odd number of track entries")
            tracks.append(np.array([int(v) for v in p[8:]], np.int64).reshape(-1, 2))
        except (IndexError, ValueError, OverflowError) as e:
            raise ColmapError(f"{path}:{lineno}: malformed point line ({e})") from None
    _check_count(path, "points", len(ids))
    try:
        ids_arr = np.array(ids, np.int64)
    except OverflowError:
        raise ColmapError(f"{path}: a point id does not fit in 64 bits") from None
    return _check_points(Points3D(ids_arr, np.array(xyz, np.float64).reshape(-1, 3),
                                  np.array(rgb, np.uint8).reshape(-1, 3), np.array(err, np.float64), tracks), path)


def write_cameras_text(cams, path):
    lines = ["# Camera list with one line of data per camera:", "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
             f"# Number of cameras: {len(cams)}"]
    lines += [" ".join([str(c.id), c.model, str(c.width), str(c.height)] + [repr(float(v)) for v in c.params]) for c in cams.values()]
    write_bytes(path, ("\n".join(lines) + "\n").encode())


def write_images_text(images, path):
    lines = ["# Image list with two lines of data per image:", "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
             "#   POINTS2D[] as (X, Y, POINT3D_ID)",
             f"# Number of images: {len(images)}, mean observations per image: "
             f"{np.mean([len(im.xys) for im in images.values()]) if images else 0:g}"]
    for im in images.values():
        lines.append(" ".join([str(im.id)] + [repr(float(v)) for v in (*im.qvec, *im.tvec)] + [str(im.camera_id), im.name]))
        lines.append(" ".join(f"{x!r} {y!r} {int(i)}" for (x, y), i in zip(im.xys.tolist(), im.point3D_ids)))
    write_bytes(path, ("\n".join(lines) + "\n").encode())


def write_points3D_text(points, path):
    lines = ["# 3D point list with one line of data per point:", "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[]",
             f"# Number of points: {len(points.ids)}, mean track length: "
             f"{np.mean([len(_track(points, i)) for i in range(len(points.ids))]) if len(points.ids) else 0:g}"]
    for i in range(len(points.ids)):
        lines.append(" ".join([str(int(points.ids[i]))] + [repr(float(v)) for v in points.xyz[i]] +
                              [str(int(v)) for v in points.rgb[i]] + [repr(float(points.errors[i]))] +
                              [str(int(v)) for v in np.asarray(_track(points, i)).ravel()]))
    write_bytes(path, ("\n".join(lines) + "\n").encode())


# ---- model ----------------------------------------------------------------------------------------

def find_model_dir(root: str) -> str | None:
    """The folder holding cameras/images/points3D under a scene root (sparse/0, sparse, or root)."""
    for d in (os.path.join(root, "sparse", "0"), os.path.join(root, "sparse"), root):
        for ext in (".bin", ".txt"):
            if os.path.exists(os.path.join(d, "cameras" + ext)):
                return d
    return None


def read_model(path: str, ext: str | None = None) -> Model:
    """Reads a model folder (binary preferred when both exist) and checks that it is consistent."""
    if ext is None:
        ext = ".bin" if os.path.exists(os.path.join(path, "cameras.bin")) else ".txt"
    files = {k: os.path.join(path, k + ext) for k in ("cameras", "images", "points3D")}
    for k, f in files.items():
        if not os.path.exists(f):
            raise ColmapError(f"{f}: missing ({k} of the COLMAP model in {path})")
    if ext == ".bin":
        cams, imgs, pts = (read_cameras_binary(files["cameras"]), read_images_binary(files["images"]),
                           read_points3D_binary(files["points3D"]))
    else:
        cams, imgs, pts = (read_cameras_text(files["cameras"]), read_images_text(files["images"]),
                           read_points3D_text(files["points3D"]))
    for im in imgs.values():
        if im.camera_id not in cams:
            raise ColmapError(f"{files['images']}: image {im.name!r} uses camera id {im.camera_id}, "
                              f"which {files['cameras']} does not define (ids: {sorted(cams)})")
    if not imgs:
        raise ColmapError(f"{files['images']}: the model has no registered images")
    return Model(cams, imgs, pts)


def write_model(model: Model, path: str, ext: str = ".bin"):
    os.makedirs(path, exist_ok=True)
    if ext == ".bin":
        write_cameras_binary(model.cameras, os.path.join(path, "cameras.bin"))
        write_images_binary(model.images, os.path.join(path, "images.bin"))
        write_points3D_binary(model.points, os.path.join(path, "points3D.bin"))
    else:
        write_cameras_text(model.cameras, os.path.join(path, "cameras.txt"))
        write_images_text(model.images, os.path.join(path, "images.txt"))
        write_points3D_text(model.points, os.path.join(path, "points3D.txt"))


def _track(points: Points3D, i: int) -> np.ndarray:
    if points.tracks is None:
        return np.zeros((0, 2), np.int64)
    return np.asarray(points.tracks[i], np.int64).reshape(-1, 2)
