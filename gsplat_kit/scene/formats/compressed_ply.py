"""PlayCanvas / SuperSplat compressed .ply: a PLY file (so any PLY reader opens it) whose Gaussians are
quantised in chunks of 256, sorted along a Morton curve so that a chunk covers a small box.

Elements, in order:
  chunk  [ceil(N/256)] float32: min/max x y z, min/max log-scale x y z, min/max r g b (the DC colour
         SH_C0 * f_dc + 0.5); older files lack the colour bounds (colours are then 0..1 as stored)
  vertex [N] uint32 x4:
         packed_position 11-10-11 bits: x, y, z as fractions of the chunk's box
         packed_rotation 2-10-10-10 bits: index of the largest quaternion component (made positive,
                         not stored), then the other three in index order as q * sqrt(1/2) + 0.5
         packed_scale    11-10-11 bits: log-scales as fractions of the chunk's range (clamped to +-20)
         packed_color    8-8-8-8 bits: r, g, b as fractions of the chunk's range, then sigmoid(opacity)
  sh     [N] uint8 x (0, 9, 24 or 45), optional: f_rest_i (channel-major as in the 3DGS .ply) as
         (v / 8 + 0.5) * 256, truncated; SH coefficients are held to [-4, 4]
Quaternion components are rot_0..rot_3 of the 3DGS .ply (w, x, y, z).

Error bounds of a round trip: positions half a step of the chunk box (extent / 4094 for x and z,
extent / 2046 for y), log-scales likewise of the chunk's range, colour half a step of the chunk's range
/ 255, opacity 0.5 / 255 in sigmoid space, rotation components sqrt(2) / 2046, SH 1/32 within [-4, 4].
"""
from __future__ import annotations

import numpy as np

from gsplat_kit.scene.formats.packing import SQRT1_2, logit_of_fraction, sigmoid, unit_quats
from gsplat_kit.scene.splats import SH_C0

CHUNK = 256
CHUNK_PROPS = ["min_x", "min_y", "min_z", "max_x", "max_y", "max_z",
               "min_scale_x", "min_scale_y", "min_scale_z", "max_scale_x", "max_scale_y", "max_scale_z"]
COLOR_PROPS = ["min_r", "min_g", "min_b", "max_r", "max_g", "max_b"]
PACKED_PROPS = ["packed_position", "packed_rotation", "packed_scale", "packed_color"]
SH_COUNTS = {0: 0, 9: 3, 24: 8, 45: 15}  # f_rest properties -> SH coefficients per channel
SCALE_LIMIT = 20.0


# a stored SH byte -> its coefficient: 0 and 255 are the ends of [-4, 4], the others their bucket's centre
_SH_OF_BYTE = ((np.concatenate([[0.0], (np.arange(1, 255) + 0.5) / 256, [1.0]]) - 0.5) * 8).astype(np.float32)


def is_compressed(data) -> bool:
    """Whether a parsed PLY (plyfile.PlyData) has the compressed layout: chunk and vertex elements, the
    vertices carrying packed_* properties."""
    if "chunk" not in data or "vertex" not in data:
        return False
    return any(p.name.startswith("packed_") for p in data["vertex"].properties)


# ---- reading ---------------------------------------------------------------------------------------------

def _columns(path, element, names: list[str], kind: str) -> np.ndarray:
    from gsplat_kit.scene.ply import PlyError

    have = element.data.dtype
    missing = [a for a in names if a not in have.names]
    if missing:
        raise PlyError(f"{path}: compressed PLY: element {element.name!r} lacks {missing}")
    wrong = [a for a in names if have[a].kind not in kind]
    if wrong:
        raise PlyError(f"{path}: compressed PLY: {element.name} properties {wrong} have the wrong type "
                       f"({have[wrong[0]]})")
    return np.stack([element.data[a] for a in names], 1)


def _unorm(v: np.ndarray, shift: int, bits: int) -> np.ndarray:
    mask = (1 << bits) - 1
    return ((v >> shift) & mask).astype(np.float64) / mask


def _lerp(lo, hi, t):
    return lo * (1 - t) + hi * t


def decode(path, data) -> dict:
    """Raw parameters of a parsed compressed PLY (plyfile.PlyData)."""
    from gsplat_kit.scene.ply import PlyError

    chunk, vertex = data["chunk"], data["vertex"]
    n = vertex.count
    if n == 0:
        raise PlyError(f"{path}: compressed PLY without Gaussians")
    if chunk.count != -(-n // CHUNK):
        raise PlyError(f"{path}: compressed PLY: {chunk.count} chunks for {n} Gaussians (expected {-(-n // CHUNK)})")
    bounds = _columns(path, chunk, CHUNK_PROPS, "f").astype(np.float64)
    has_color = "min_r" in chunk.data.dtype.names
    colors = _columns(path, chunk, COLOR_PROPS, "f").astype(np.float64) if has_color else None
    packed = _columns(path, vertex, PACKED_PROPS, "ui").astype(np.int64) & 0xFFFFFFFF
    ci = np.arange(n) // CHUNK
    b = bounds[ci]

    pos, rot, scl, col = packed.T
    t = np.stack([_unorm(pos, 21, 11), _unorm(pos, 11, 10), _unorm(pos, 0, 11)], 1)
    means = _lerp(b[:, 0:3], b[:, 3:6], t)
    t = np.stack([_unorm(scl, 21, 11), _unorm(scl, 11, 10), _unorm(scl, 0, 11)], 1)
    scales = _lerp(b[:, 6:9], b[:, 9:12], t)
    rgb = np.stack([_unorm(col, 24, 8), _unorm(col, 16, 8), _unorm(col, 8, 8)], 1)
    if has_color:
        rgb = _lerp(colors[ci, 0:3], colors[ci, 3:6], rgb)
    opac = logit_of_fraction(_unorm(col, 0, 8), 255)

    largest = rot >> 30
    stored = np.stack([(_unorm(rot, s, 10) - 0.5) * np.sqrt(2) for s in (20, 10, 0)], 1)
    q = np.zeros((n, 4))
    slot = np.zeros(n, np.int64)
    for i in range(4):  # the stored components fill the other slots in index order
        keep = largest != i
        q[:, i] = np.where(keep, stored[np.arange(n), np.minimum(slot, 2)], 0.0)
        slot += keep
    q[np.arange(n), largest] = np.sqrt(np.maximum(0.0, 1.0 - (q * q).sum(1)))

    shN = np.zeros((n, 0, 3), np.float32)
    if "sh" in data:
        sh = data["sh"]
        k = len(sh.properties)
        if k not in SH_COUNTS or sh.count != n:
            raise PlyError(f"{path}: compressed PLY: element 'sh' has {k} properties x {sh.count} rows "
                           f"(expected 9, 24 or 45 x {n})")
        raw = _columns(path, sh, [f"f_rest_{i}" for i in range(k)], "u")
        if raw.max(initial=0) > 255:
            raise PlyError(f"{path}: compressed PLY: SH values above 255")
        shN = _SH_OF_BYTE[raw.astype(np.uint8)].reshape(n, 3, SH_COUNTS[k]).transpose(0, 2, 1)
    return {
        "means": means.astype(np.float32),
        "scales": scales.astype(np.float32),
        "quats": unit_quats(q).astype(np.float32),
        "opacities": opac.astype(np.float32),
        "sh0": ((rgb - 0.5) / SH_C0).astype(np.float32).reshape(n, 1, 3),
        "shN": np.ascontiguousarray(shN),
    }


# ---- writing ---------------------------------------------------------------------------------------------

def _spread_bits(v: np.ndarray) -> np.ndarray:
    """The low 21 bits of v spread out to every third bit (for a 63-bit Morton code)."""
    v = v.astype(np.uint64) & np.uint64(0x1FFFFF)
    for shift, mask in ((32, 0x1F00000000FFFF), (16, 0x1F0000FF0000FF), (8, 0x100F00F00F00F00F),
                        (4, 0x10C30C30C30C30C3), (2, 0x1249249249249249)):
        v = (v | (v << np.uint64(shift))) & np.uint64(mask)
    return v


def morton_order(means: np.ndarray) -> np.ndarray:
    """Indices that sort points along a Z-order curve through their bounding box."""
    lo, hi = means.min(0), means.max(0)
    cells = np.floor((means - lo) / np.maximum(hi - lo, 1e-30) * ((1 << 21) - 1)).astype(np.int64)
    code = _spread_bits(cells[:, 0]) | _spread_bits(cells[:, 1]) << np.uint64(1) | _spread_bits(cells[:, 2]) << np.uint64(2)
    return np.argsort(code, kind="stable")


def _pack_unorm(t: np.ndarray, bits: int) -> np.ndarray:
    top = (1 << bits) - 1
    return np.clip(np.floor(t * top + 0.5), 0, top).astype(np.uint32)


def _chunk_fractions(values: np.ndarray, n_chunks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-chunk min and max of [N, C] values (the last chunk padded with its last row) and each value
    as a fraction of its chunk's range."""
    n = len(values)
    padded = np.concatenate([values, np.repeat(values[-1:], n_chunks * CHUNK - n, 0)])
    per_chunk = padded.reshape(n_chunks, CHUNK, -1)
    lo, hi = per_chunk.min(1), per_chunk.max(1)
    return lo, hi, _fraction(values, lo[np.arange(n) // CHUNK], hi[np.arange(n) // CHUNK])


def _fraction(v, lo, hi):
    span = hi - lo
    t = np.where(span < 1e-5, 0.0, (v - lo) / np.where(span < 1e-5, 1.0, span))
    return np.clip(t, 0.0, 1.0)


def encode(params: dict) -> tuple[list[tuple[str, np.ndarray]], np.ndarray]:
    """The PLY elements (name, structured array) and the order the Gaussians were written in."""
    order = morton_order(params["means"].astype(np.float64))
    n = len(order)
    n_chunks = -(-n // CHUNK)
    means = params["means"][order].astype(np.float64)
    scales = np.clip(params["scales"][order].astype(np.float64), -SCALE_LIMIT, SCALE_LIMIT)
    rgb = params["sh0"][order, 0].astype(np.float64) * SH_C0 + 0.5
    p_lo, p_hi, p_t = _chunk_fractions(means, n_chunks)
    s_lo, s_hi, s_t = _chunk_fractions(scales, n_chunks)
    c_lo, c_hi, c_t = _chunk_fractions(rgb, n_chunks)

    def pack_11_10_11(t):
        return _pack_unorm(t[:, 0], 11) << 21 | _pack_unorm(t[:, 1], 10) << 11 | _pack_unorm(t[:, 2], 11)

    q = unit_quats(params["quats"][order])
    largest = np.argmax(np.abs(q), axis=1)
    q = q * np.where(q[np.arange(n), largest] < 0, -1.0, 1.0)[:, None]
    rotation = largest.astype(np.uint32)
    for i in range(4):
        field = _pack_unorm(q[:, i] * SQRT1_2 + 0.5, 10)
        rotation = np.where(largest != i, rotation << 10 | field, rotation)
    opac = sigmoid(params["opacities"][order])
    color = (_pack_unorm(c_t[:, 0], 8) << 24 | _pack_unorm(c_t[:, 1], 8) << 16 | _pack_unorm(c_t[:, 2], 8) << 8
             | _pack_unorm(opac, 8))

    chunk = np.zeros(n_chunks, [(a, "<f4") for a in CHUNK_PROPS + COLOR_PROPS])
    for j, a in enumerate("xyz"):
        chunk[f"min_{a}"], chunk[f"max_{a}"] = p_lo[:, j], p_hi[:, j]
        chunk[f"min_scale_{a}"], chunk[f"max_scale_{a}"] = s_lo[:, j], s_hi[:, j]
    for j, a in enumerate("rgb"):
        chunk[f"min_{a}"], chunk[f"max_{a}"] = c_lo[:, j], c_hi[:, j]
    vertex = np.zeros(n, [(a, "<u4") for a in PACKED_PROPS])
    vertex["packed_position"], vertex["packed_rotation"] = pack_11_10_11(p_t), rotation
    vertex["packed_scale"], vertex["packed_color"] = pack_11_10_11(s_t), color
    elements = [("chunk", chunk), ("vertex", vertex)]
    shN = params["shN"][order]
    if shN.shape[1]:
        rest = shN.transpose(0, 2, 1).reshape(n, -1).astype(np.float64)  # channel-major
        quant = np.ascontiguousarray(np.clip(np.trunc((rest / 8 + 0.5) * 256), 0, 255).astype(np.uint8))
        sh = quant.view(np.dtype([(f"f_rest_{i}", "u1") for i in range(rest.shape[1])])).reshape(n)  # same bytes
        elements.append(("sh", sh))
    return elements, order

