"""Niantic's `.spz`: the Gaussians' attributes, each quantised, stored attribute by attribute.

Versions 1-3: one gzip stream of a 16-byte header and the attributes. Header (little-endian): magic
0x5053474E ("NGSP"), version u32, count u32, SH degree u8, fractional bits u8, flags u8 (0x1: trained
antialiased), reserved u8.
Version 4: a plain 32-byte header (the same fields, then number of streams u8, byte offset of the table
of contents u32, 12 reserved bytes), optional extension records up to that offset, the table (per stream:
compressed size u64, uncompressed size u64) and one zstd frame per non-empty attribute, in the order below.
The attributes, for all Gaussians in turn:
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
Version 3 is written by default: the newest that gzip-only readers (most web viewers) open.

Error bounds of a round trip (writer defaults): positions 2^-(fractional bits + 1) (2^-13 for scenes
within +-2048), colour (DC) 0.5 / (0.15 * 255), alpha 0.5 / 255, log-scale 1 / 32, rotation components
(v3) sqrt(1/2) / 1022 before renormalisation, SH 1/32 (degree 1) and 1/16 (degrees 2-3) within [-1, 1].
"""
from __future__ import annotations

import gzip
import io
import struct
import zlib

import numpy as np

from gsplat_kit.common.errors import UserError
from gsplat_kit.scene.formats.packing import SQRT1_2, logit_of_fraction, sigmoid, to_u8, unit_quats

MAGIC = 0x5053474E
HEADER = struct.Struct("<IIIBBBB")
HEADER_V4 = struct.Struct("<IIIBBBBI12x")
TOC_ENTRY = struct.Struct("<QQ")
VERSIONS = (1, 2, 3, 4)
WRITE_VERSIONS = (2, 3, 4)
ZSTD_LEVEL = 12  # the reference writer's level
COLOR_SCALE = 0.15
FLAG_ANTIALIASED = 0x1
MAX_FRACTIONAL_BITS = 12  # the reference writer's precision (1/4096); fewer bits only when a scene needs the range
# deflate cannot shrink data by more than about 1032:1, so a header claiming more bytes than that is a lie;
# zstd can, so for v4 the reference reader's bound holds: 9 bytes of positions a Gaussian at most 1024:1
_MAX_RATIO = {"gzip": 1100, "zstd": 1024}
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
    """The .spz bytes of raw parameters (numpy, see packing.numpy_params): gzip (v2, v3) or zstd streams (v4)."""
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
    flags = FLAG_ANTIALIASED if antialiased else 0
    streams = [np.ascontiguousarray(a).tobytes() for a in (positions, alphas, colors, scales, rotations, sh)]
    if version >= 4:
        return _zstd_container(n, degree, bits, flags, [b for b in streams if b])
    return gzip.compress(HEADER.pack(MAGIC, version, n, degree, bits, flags, 0) + b"".join(streams), compresslevel=6,
                         mtime=0)


def _zstd_container(n, degree, bits, flags, streams: list[bytes]) -> bytes:
    import zstandard

    frames = [zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(b) for b in streams]
    header = HEADER_V4.pack(MAGIC, 4, n, degree, bits, flags, len(frames), HEADER_V4.size)
    toc = b"".join(TOC_ENTRY.pack(len(f), len(b)) for f, b in zip(frames, streams))
    return header + toc + b"".join(frames)


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


def _check_header(path, magic, version, n, degree, bits, gzip_versions: bool) -> list[tuple[str, int]]:
    if magic != MAGIC:
        raise SpzError(f"{path}: not a .spz file (magic {magic:#010x}, expected {MAGIC:#010x})")
    if version not in VERSIONS or (version >= 4) == gzip_versions:
        raise SpzError(f"{path}: .spz version {version} is not supported in a "
                       f"{'gzip' if gzip_versions else 'zstd'} container (versions 1-3 are gzip, 4 is zstd)")
    if degree not in SH_DIMS:
        raise SpzError(f"{path}: SH degree {degree} is not supported (0-3)")
    if bits > 23:
        raise SpzError(f"{path}: {bits} fractional bits do not fit a 24-bit position")
    if n == 0:
        raise SpzError(f"{path}: the file holds no Gaussians")
    return _record_sizes(version, SH_DIMS[degree])


def _check_count(path, n, parts, blob_size, container):
    per_point = sum(size for _, size in parts) if container == "gzip" else dict(parts)["positions"]
    if n * per_point > blob_size * _MAX_RATIO[container]:
        raise SpzError(f"{path}: the header claims {n} Gaussians ({n * per_point} bytes), more than a {blob_size}-byte "
                       f"{container} file can hold")


def decode(path, blob: bytes) -> dict:
    if blob[:4] == b"NGSP":
        return _decode_zstd(path, blob)
    if blob[:2] != b"\x1f\x8b":
        raise SpzError(f"{path}: not a .spz file (neither a gzip stream nor an NGSP header)")
    stream = _Inflater(path, blob)
    magic, version, n, degree, bits, flags, _ = HEADER.unpack(stream.take(HEADER.size, "the header"))
    parts = _check_header(path, magic, version, n, degree, bits, gzip_versions=True)
    _check_count(path, n, parts, len(blob), "gzip")
    raw = {name: np.frombuffer(stream.take(n * size, name), np.uint8).reshape(n, size)
           for name, size in parts}
    out = _unpack(raw, n, version, degree, bits)
    out["antialiased"] = bool(flags & FLAG_ANTIALIASED)
    return out


def _decode_zstd(path, blob: bytes) -> dict:
    if len(blob) < HEADER_V4.size:
        raise SpzError(f"{path}: truncated: {len(blob)} bytes, shorter than the {HEADER_V4.size}-byte header")
    magic, version, n, degree, bits, flags, num_streams, toc_at = HEADER_V4.unpack_from(blob)
    parts = _check_header(path, magic, version, n, degree, bits, gzip_versions=False)
    _check_count(path, n, parts, len(blob), "zstd")
    parts = [(name, size) for name, size in parts if size]  # empty attributes (no SH) have no stream
    if num_streams != len(parts):
        raise SpzError(f"{path}: {num_streams} streams, expected {len(parts)} (one per non-empty attribute)")
    toc_end = toc_at + num_streams * TOC_ENTRY.size
    if toc_at < HEADER_V4.size or toc_end > len(blob):
        raise SpzError(f"{path}: table of contents at bytes {toc_at}..{toc_end} is not between the "
                       f"{HEADER_V4.size}-byte header and the end of the file ({len(blob)} bytes)")
    import zstandard

    raw, at = {}, toc_end
    for i, (name, size) in enumerate(parts):
        packed, unpacked = TOC_ENTRY.unpack_from(blob, toc_at + i * TOC_ENTRY.size)
        if unpacked != n * size:
            raise SpzError(f"{path}: stream {name} holds {unpacked} bytes, {n} Gaussians need {n * size}")
        if packed > len(blob) - at:
            raise SpzError(f"{path}: truncated: stream {name} needs {packed} bytes, the file has {len(blob) - at} left")
        data = _unzstd(path, name, blob[at:at + packed], n * size)
        if len(data) != n * size:
            raise SpzError(f"{path}: stream {name} decompresses to {len(data)} bytes, expected {n * size}")
        raw[name] = np.frombuffer(data, np.uint8).reshape(n, size)
        at += packed
    if at != len(blob):
        raise SpzError(f"{path}: {len(blob) - at} bytes after the last stream")
    if SH_DIMS[degree] == 0:
        raw["sh"] = np.zeros((n, 0), np.uint8)
    out = _unpack(raw, n, version, degree, bits)
    out["antialiased"] = bool(flags & FLAG_ANTIALIASED)
    return out


def _unzstd(path, name, frame: bytes, want: int) -> bytes:
    """A zstd frame inflated piece by piece up to one byte more than `want` (a frame may lie about its size)."""
    import zstandard

    pieces, got = [], 0
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(frame))
        while got <= want:
            piece = reader.read(min(want + 1 - got, 1 << 24))
            if not piece:
                break
            pieces.append(piece)
            got += len(piece)
    except zstandard.ZstdError as e:
        raise SpzError(f"{path}: corrupt zstd stream {name} ({e})") from None
    return b"".join(pieces)


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
