"""The standard 3D Gaussian Splatting .ply (the original implementation's layout), read and written with
`plyfile` (the library graphdeco's code uses).

Vertex properties, in order: x y z nx ny nz f_dc_0..2 f_rest_0..(3(K-1)-1) opacity scale_0..2 rot_0..3,
float32, binary little-endian. Values are stored as the original stores them: log-scales, opacity
logits, unnormalised quaternions (w, x, y, z), SH coefficients with f_rest channel-major (all of R's
coefficients, then G's, then B's). Files from other tools may order properties differently, add more,
use other numeric types, big-endian or ASCII; reading goes by name.

`read_ply` is the one guarded entry to plyfile: sizes are checked against the file before plyfile
allocates or maps anything, and whatever plyfile raises becomes a `PlyError` naming the file.
"""
from __future__ import annotations

import io
import os

import numpy as np
import plyfile
import torch

from gsplat_kit.common.atomic import atomic_write
from gsplat_kit.common.errors import UserError

# A 3DGS header is about 1.3 KB; a header that does not end within this is not a splat file.
MAX_HEADER_BYTES = 1 << 20
# Binary elements with list properties (a mesh's faces) cannot be memory-mapped: plyfile reads them row by row
MAX_LIST_ROWS = 100_000
_FORMATS = ("binary_little_endian", "binary_big_endian", "ascii")


class PlyError(UserError):
    """A .ply that is not a readable 3DGS file."""


def attribute_names(num_rest: int) -> list[str]:
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(num_rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


# ---- writing ---------------------------------------------------------------------------------------------

def write_elements(path, elements: list[tuple[str, np.ndarray]]) -> None:
    """Writes structured arrays as binary little-endian PLY elements, atomically."""
    data = plyfile.PlyData([plyfile.PlyElement.describe(a, name) for name, a in elements], byte_order="<")
    with atomic_write(path, "wb") as f:
        data.write(f)


def save_ply(path: str, splats: dict) -> None:
    """Writes splats (means, scales, quats, opacities, sh0 [N,1,3], shN [N,K-1,3]) atomically."""
    missing = [k for k in ("means", "scales", "quats", "opacities", "sh0") if k not in splats]
    if missing:
        raise ValueError(f"save_ply({path}): splats lack {missing}")
    t = {k: (v.detach().cpu().float().numpy() if torch.is_tensor(v) else np.asarray(v, np.float32)) for k, v in splats.items()}
    n = t["means"].shape[0]
    shN = t.get("shN", np.zeros((n, 0, 3), np.float32))
    want = {"means": (n, 3), "scales": (n, 3), "quats": (n, 4), "opacities": (n,), "sh0": (n, 1, 3)}
    bad = {k: tuple(t[k].shape) for k, shp in want.items() if tuple(t[k].shape) != shp and t[k].size != np.prod(shp)}
    if bad or shN.ndim != 3 or shN.shape[0] != n or shN.shape[2] != 3 or int(round((shN.shape[1] + 1) ** 0.5)) ** 2 != shN.shape[1] + 1:
        raise ValueError(f"save_ply({path}): bad shapes {bad or {'shN': tuple(shN.shape)}} for {n} Gaussians "
                         f"(means [N,3], scales [N,3], quats [N,4], opacities [N], sh0 [N,1,3], shN [N,(d+1)^2-1,3])")
    sh0 = t["sh0"].reshape(n, 3)
    rest = shN.transpose(0, 2, 1).reshape(n, -1)  # channel-major, as the original
    cols = [t["means"], np.zeros((n, 3), np.float32), sh0, rest, t["opacities"].reshape(n, 1), t["scales"], t["quats"]]
    table = np.ascontiguousarray(np.concatenate([np.asarray(c, "<f4").reshape(n, -1) for c in cols], 1))
    names = attribute_names(rest.shape[1])
    vertex = table.view(np.dtype([(a, "<f4") for a in names])).reshape(n)  # the same bytes, one record per row
    write_elements(path, [("vertex", vertex)])


# ---- reading ---------------------------------------------------------------------------------------------

def _header_error(path, head: bytes, e: plyfile.PlyHeaderParseError) -> PlyError:
    lines = head.split(b"\n")
    if e.message == "expected 'ply'" or e.line == 1:
        return PlyError(f"{path}: not a PLY file (first line {lines[0][:20]!r})")
    if e.message == "early end-of-file":
        return PlyError(f"{path}: truncated header (no end_header)")
    text = lines[e.line - 1][:60].decode("ascii", "replace").strip() if e.line and e.line <= len(lines) else "?"
    return PlyError(f"{path}: malformed header line {text!r} ({e.message.split(' not in ')[0]})")


def _parse_header(path, f, size: int) -> tuple[plyfile.PlyData, int]:
    """The header (elements, counts, properties) through plyfile, from at most MAX_HEADER_BYTES, and its length."""
    head = f.read(min(size, MAX_HEADER_BYTES))
    stream = io.BytesIO(head)
    try:
        header = plyfile.PlyData._parse_header(stream)
    except plyfile.PlyHeaderParseError as e:
        if e.message == "early end-of-file" and size > MAX_HEADER_BYTES:
            raise PlyError(f"{path}: no end_header in the first {MAX_HEADER_BYTES} bytes") from None
        raise _header_error(path, head, e) from None
    except UnicodeDecodeError:
        first = next(i for i, b in enumerate(head) if b >= 0x80)
        line = head[:first].count(b"\n") + 1
        raise PlyError(f"{path}: non-ASCII byte in header line {line}") from None
    except (ValueError, TypeError, KeyError, IndexError) as e:  # e.g. two properties of one name
        raise PlyError(f"{path}: malformed header ({e})") from None
    return header, stream.tell()


def _check_sizes(path, header: plyfile.PlyData, body_bytes: int) -> None:
    """Refuses counts the file cannot hold, before anything is allocated for them (a header can claim 10^12)."""
    need = 0
    for el in header.elements:
        if el.count < 0:
            raise PlyError(f"{path}: element {el.name!r} has a negative count {el.count}")
        if header.text:  # each value takes a character and a separator
            row = 2 * max(1, len(el.properties))
        else:
            row = max(1, sum(np.dtype(p.len_dtype if isinstance(p, plyfile.PlyListProperty) else p.val_dtype).itemsize
                             for p in el.properties))
        need += el.count * row
        if need > body_bytes:
            raise PlyError(f"{path}: truncated: element {el.name!r} claims {el.count} rows, but the file has only "
                           f"{body_bytes} bytes after its header")


def read_ply(path) -> plyfile.PlyData:
    """A PLY file's elements through plyfile, every failure a `PlyError` naming the file."""
    path = str(path)
    if not os.path.exists(path):
        raise FileNotFoundError(2, "no such file", path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        header, header_len = _parse_header(path, f, size)
        _check_sizes(path, header, size - header_len)
        for el in header.elements:
            if not any(isinstance(p, plyfile.PlyListProperty) for p in el.properties):
                continue
            if el.name == "vertex":  # splats are one fixed-size record per vertex; a list there is a mesh (or garbage)
                raise PlyError(f"{path}: list property in the vertex element: not a 3DGS point cloud")
            if not header.text and el.count > MAX_LIST_ROWS:  # plyfile reads those row by row, in Python
                raise PlyError(f"{path}: element {el.name!r} has {el.count} rows of list properties (a mesh?); splat "
                               f"files have none, and more than {MAX_LIST_ROWS} are not read")
        f.seek(0)
        try:
            if header.text:
                # plyfile reads ASCII bodies from text; bytes that are not ASCII become U+FFFD and so fail
                # as a malformed value of their row instead of as a decoding error of the whole file
                return plyfile.PlyData.read(io.StringIO(f.read().decode("ascii", "replace")))
            return plyfile.PlyData.read(f, mmap="c")
        except plyfile.PlyElementParseError as e:
            where = f"element {e.element.name!r}" if e.element is not None else "the body"
            if e.message == "early end-of-file":
                raise PlyError(f"{path}: truncated: {where} ends at row {e.row}") from None
            if header.text:
                raise PlyError(f"{path}: malformed ASCII row {e.row} of {where} ({e.message})") from None
            raise PlyError(f"{path}: malformed {where}, row {e.row} ({e.message})") from None
        except MemoryError:
            raise PlyError(f"{path}: too large to read into memory") from None
        except Exception as e:  # anything else plyfile or numpy raise on a file they cannot take
            raise PlyError(f"{path}: unreadable PLY ({type(e).__name__}: {e})") from None


def _vertex_table(path, data: plyfile.PlyData) -> np.ndarray:
    if "vertex" not in data:
        raise PlyError(f"{path}: no vertex element")
    return data["vertex"].data


def load_ply(path: str) -> dict:
    """Reads a 3DGS .ply into float32 tensors: means, scales (log), quats, opacities (logit), sh0, shN.
    A PlayCanvas/SuperSplat compressed .ply (recognised by its elements) is decoded into the same."""
    data = read_ply(path)
    from gsplat_kit.scene.formats import compressed_ply

    if compressed_ply.is_compressed(data):
        params = compressed_ply.decode(path, data)
    else:
        params = _splat_params(path, _vertex_table(path, data))
    for k, v in params.items():
        if not np.isfinite(v).all():
            raise PlyError(f"{path}: {k} holds NaN or inf values")
    return {k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in params.items()}


def _splat_params(path, vertex: np.ndarray) -> dict:
    names = vertex.dtype.names
    need = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
            "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [a for a in need if a not in names]
    if missing:
        raise PlyError(f"{path}: not a 3D Gaussian Splatting file: missing vertex properties {missing}")
    n_rest = sum(1 for a in names if a.startswith("f_rest_"))
    if any(f"f_rest_{i}" not in names for i in range(n_rest)):
        raise PlyError(f"{path}: f_rest properties are not numbered 0..{n_rest - 1}")
    if n_rest % 3 or int(round((n_rest // 3 + 1) ** 0.5)) ** 2 != n_rest // 3 + 1:
        raise PlyError(f"{path}: {n_rest} f_rest properties do not make a whole SH degree (expected 0, 9, 24 or 45)")
    n = len(vertex)
    if all(vertex.dtype[a] == np.dtype("<f4") for a in names) and vertex.dtype.itemsize == 4 * len(names):
        # the usual case (all little-endian float32): one [N, props] view and column gathers, no per-column copies
        table = np.asarray(vertex).view("<f4").reshape(n, len(names))
        index = {a: i for i, a in enumerate(names)}
        stack = lambda attrs: table[:, [index[a] for a in attrs]]
    else:  # other types and byte orders; float64 beyond float32's range becomes inf (refused below)
        def stack(attrs):
            with np.errstate(over="ignore"):
                return np.stack([vertex[a].astype(np.float32) for a in attrs], 1)
    rest = stack([f"f_rest_{i}" for i in range(n_rest)]) if n_rest else np.zeros((n, 0), np.float32)
    return {
        "means": stack(["x", "y", "z"]),
        "scales": stack(["scale_0", "scale_1", "scale_2"]),
        "quats": stack(["rot_0", "rot_1", "rot_2", "rot_3"]),
        "opacities": stack(["opacity"])[:, 0],
        "sh0": stack(["f_dc_0", "f_dc_1", "f_dc_2"]).reshape(n, 1, 3),
        "shN": rest.reshape(n, 3, n_rest // 3).transpose(0, 2, 1).copy(),
    }


def sh_degree_of(splats: dict) -> int:
    """The SH degree the coefficients of a splat dict allow."""
    return int(round((splats["shN"].shape[1] + 1) ** 0.5)) - 1
