"""Niantic's `.spz`: a gzip stream of a 16-byte header and the Gaussians' attributes, each quantised,
stored attribute by attribute (versions 1-3 of the format; version 4 switched to zstd streams).

Header (little-endian): magic 0x5053474E ("NGSP"), version u32, count u32, SH degree u8, fractional bits
u8, flags u8 (0x1: trained antialiased), reserved u8. Then, for all Gaussians in turn:
  positions  3 x 24-bit signed fixed point with `fractional bits` bits after the point (v1: float16)
  alphas     u8: sigmoid(opacity) * 255
  colours    u8 x3: DC coefficient * 0.15 * 255 + 127.5 (0.15, not SH_C0, leaves room for DC values
             outside [0, 1] that the higher bands bring back)
  scales     u8 x3: (log scale + 10) * 16
  rotations  v3: "smallest three" in a u32: 2 bits for the index of the largest component (which is made
             positive and not stored), then the other three in index order as sign + 9-bit magnitude
             of |q_i| / sqrt(1/2); v1/v2: u8 x3 of x, y, z as q * 127.5 + 127.5 with w >= 0
             (quaternions are x, y, z, w in the file; w, x, y, z in gsplat_kit)
  SH         u8 per coefficient, coefficient-major with the colour channel inner: x * 128 + 128,
             rounded to 5 bits for degree 1 and 4 bits above (the gzip stream then compresses better)
Coordinates are stored as given (no axis conversion), as Niantic's ply_to_spz does by default.

Error bounds of a round trip (writer defaults): positions 2^-(fractional bits + 1) (2^-13 for scenes
within +-2048), colour (DC) 0.5 / (0.15 * 255), alpha 0.5 / 255, log-scale 1 / 32, rotation components
(v3) sqrt(1/2) / 1022 before renormalisation, SH 1/32 (degree 1) and 1/16 (degrees 2-3) within [-1, 1].
"""
from __future__ import annotations

import gzip
import struct
import zlib

import numpy as np

from gsplat_kit.common.errors import UserError
from gsplat_kit.scene.formats.packing import SQRT1_2, logit_of_fraction, sigmoid, to_u8, unit_quats

MAGIC = 0x5053474E
HEADER = struct.Struct("<IIIBBBB")
VERSIONS = (1, 2, 3)
WRITE_VERSIONS = (2, 3)
COLOR_SCALE = 0.15
FLAG_ANTIALIASED = 0x1
MAX_FRACTIONAL_BITS = 12  # the reference writer's precision (1/4096); fewer bits only when a scene needs the range
# deflate cannot shrink data by more than about 1032:1, so a header claiming more bytes than that is a lie
_MAX_DEFLATE_RATIO = 1100
SH_DIMS = {0: 0, 1: 3, 2: 8, 3: 15}


class SpzError(UserError):
    """A .spz file that cannot be read."""


def _record_sizes(version: int, sh_dim: int) -> list[tuple[str, int]]:
    return [("positions", 6 if version == 1 else 9), ("alphas", 1), ("colors", 3), ("scales", 3),
            ("rotations", 4 if version >= 3 else 3), ("sh", 3 * sh_dim)]


# ---- writing ---------------------------------------------------------------------------------------------

def _fractional_bits(means: np.ndarray) -> int:
    reach = float(np.abs(means).max()) if means.size else 0.0
    limit = (1 << 23) - 1
    for bits in range(MAX_FRACTIONAL_BITS, -1, -1):
        if reach * (1 << bits) <= limit:
            return bits
    raise UserError(f".spz stores positions as 24-bit fixed point: a coordinate of {reach:g} is out of its range "
                    f"(+-{limit})")


def _smallest_three(q_xyzw: np.ndarray) -> np.ndarray:
    n = len(q_xyzw)
    largest = np.argmax(np.abs(q_xyzw), axis=1)
    sign = np.where(q_xyzw[np.arange(n), largest] < 0, -1.0, 1.0)
    q = q_xyzw * sign[:, None]  # -q is the same rotation: make the largest component positive
    comp = largest.astype(np.uint32)
    for i in range(4):
        keep = largest != i
        mag = np.minimum(np.floor(511 * np.abs(q[:, i]) / SQRT1_2 + 0.5), 511).astype(np.uint32)
        field = (q[:, i] < 0).astype(np.uint32) << 9 | mag
        comp = np.where(keep, comp << 10 | field, comp)
    return comp.astype("<u4").view(np.uint8).reshape(n, 4)


def _quantize_sh(x: np.ndarray, bits: int) -> np.ndarray:
    q = np.round(x.astype(np.float64) * 128) + 128
    bucket = 1 << (8 - bits)
    q = (q + bucket // 2) // bucket * bucket  # 0 stays a bucket centre
    return np.clip(q, 0, 255).astype(np.uint8)


def encode(params: dict, version: int = 3, antialiased: bool = False, sh1_bits: int = 5, sh_rest_bits: int = 4) -> bytes:
    """The gzip-compressed .spz bytes of raw parameters (numpy, see packing.numpy_params)."""
    if version not in WRITE_VERSIONS:
        raise UserError(f".spz version {version} cannot be written (versions {', '.join(map(str, WRITE_VERSIONS))})")
    means = params["means"].astype(np.float64)
    n = len(means)
    sh_dim = params["shN"].shape[1]
    degree = {v: k for k, v in SH_DIMS.items()}[sh_dim]
    bits = _fractional_bits(means)
    fixed = np.round(means * (1 << bits)).astype(np.int32).reshape(-1)
    positions = fixed.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3]  # the low 3 bytes, little-endian
    alphas = to_u8(sigmoid(params["opacities"]) * 255)
    colors = to_u8(params["sh0"].reshape(n, 3).astype(np.float64) * (COLOR_SCALE * 255) + 0.5 * 255)
    scales = to_u8((params["scales"].astype(np.float64) + 10) * 16)
    q = unit_quats(params["quats"])[:, [1, 2, 3, 0]]  # w, x, y, z -> x, y, z, w
    if version >= 3:
        rotations = _smallest_three(q)
    else:
        q = q * np.where(q[:, 3:] < 0, -127.5, 127.5) + 127.5
        rotations = to_u8(q[:, :3])
    sh = params["shN"]
    sh = np.concatenate([_quantize_sh(sh[:, :3], sh1_bits), _quantize_sh(sh[:, 3:], sh_rest_bits)], 1) if sh_dim else \
        np.zeros((n, 0, 3), np.uint8)
    header = HEADER.pack(MAGIC, version, n, degree, bits, FLAG_ANTIALIASED if antialiased else 0, 0)
    body = b"".join(np.ascontiguousarray(a).tobytes() for a in (positions, alphas, colors, scales, rotations, sh))
    return gzip.compress(header + body, compresslevel=6, mtime=0)


# ---- reading ---------------------------------------------------------------------------------------------

class _Inflater:
    """Reads a gzip stream piece by piece, never inflating more than asked for (a header may lie)."""

    def __init__(self, path, blob: bytes):
        self.path, self.pending = path, blob
        self.inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def take(self, want: int, what: str) -> bytes:
        pieces, got = [], 0
        while got < want:
            try:
                piece = self.inflater.decompress(self.pending, want - got)
            except zlib.error as e:
                raise SpzError(f"{self.path}: corrupt gzip stream ({e})") from None
            self.pending = self.inflater.unconsumed_tail
            if not piece:
                raise SpzError(f"{self.path}: truncated: {what} needs {want} bytes, the stream holds {got}")
            pieces.append(piece)
            got += len(piece)
        return b"".join(pieces)


def decode(path, blob: bytes) -> dict:
    if blob[:4] == b"NGSP":
        raise SpzError(f"{path}: .spz version 4 (zstd streams) is not supported; versions 1-3 (gzip) are")
    if blob[:2] != b"\x1f\x8b":
        raise SpzError(f"{path}: not a .spz file (no gzip stream)")
    stream = _Inflater(path, blob)
    magic, version, n, degree, bits, flags, _ = HEADER.unpack(stream.take(HEADER.size, "the header"))
    if magic != MAGIC:
        raise SpzError(f"{path}: not a .spz file (magic {magic:#010x}, expected {MAGIC:#010x})")
    if version not in VERSIONS:
        raise SpzError(f"{path}: .spz version {version} is not supported (versions {VERSIONS[0]}-{VERSIONS[-1]})")
    if degree not in SH_DIMS:
        raise SpzError(f"{path}: SH degree {degree} is not supported (0-3)")
    if bits > 23:
        raise SpzError(f"{path}: {bits} fractional bits do not fit a 24-bit position")
    if n == 0:
        raise SpzError(f"{path}: the file holds no Gaussians")
    parts = _record_sizes(version, SH_DIMS[degree])
    per_point = sum(size for _, size in parts)
    if n * per_point > len(blob) * _MAX_DEFLATE_RATIO:
        raise SpzError(f"{path}: the header claims {n} Gaussians ({n * per_point} bytes), more than a {len(blob)}-byte "
                       f"gzip stream can hold")
    raw = {name: np.frombuffer(stream.take(n * size, name), np.uint8).reshape(n, size)
           for name, size in parts}
    out = _unpack(raw, n, version, degree, bits)
    out["antialiased"] = bool(flags & FLAG_ANTIALIASED)
    return out


def _unpack(raw: dict, n: int, version: int, degree: int, bits: int) -> dict:
    if version == 1:
        means = raw["positions"].copy().view("<f2").astype(np.float64)
    else:
        p = raw["positions"].reshape(n, 3, 3).astype(np.int32)
        fixed = p[..., 0] | p[..., 1] << 8 | p[..., 2] << 16
        fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)  # sign extension
        means = fixed / float(1 << bits)
    r = raw["rotations"]
    if version >= 3:
        comp = r.copy().view("<u4")[:, 0].astype(np.int64)
        largest = comp >> 30
        q = np.zeros((n, 4))
        shift = 0
        for i in range(3, -1, -1):  # the last stored component sits in the lowest bits
            keep = largest != i
            field = (comp >> shift) & 0x3FF
            value = SQRT1_2 * (field & 0x1FF) / 511.0 * np.where(field & 0x200, -1.0, 1.0)
            q[:, i] = np.where(keep, value, 0.0)
            shift = np.where(keep, shift + 10, shift)
        q[np.arange(n), largest] = np.sqrt(np.maximum(0.0, 1.0 - (q * q).sum(1)))
    else:
        xyz = r.astype(np.float64) / 127.5 - 1.0
        q = np.concatenate([xyz, np.sqrt(np.maximum(0.0, 1.0 - (xyz * xyz).sum(1, keepdims=True)))], 1)
    sh_dim = SH_DIMS[degree]
    return {
        "means": means.astype(np.float32),
        "scales": (raw["scales"].astype(np.float32) / 16 - 10),
        "quats": unit_quats(q[:, [3, 0, 1, 2]]).astype(np.float32),
        "opacities": logit_of_fraction(raw["alphas"][:, 0] / 255.0, 255).astype(np.float32),
        "sh0": ((raw["colors"].astype(np.float64) / 255 - 0.5) / COLOR_SCALE).astype(np.float32).reshape(n, 1, 3),
        "shN": ((raw["sh"].astype(np.float32) - 128) / 128).reshape(n, sh_dim, 3),
    }


def read(path) -> dict:
    with open(path, "rb") as f:
        params = decode(path, f.read())
    params.pop("antialiased")
    return params
