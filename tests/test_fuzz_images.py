"""Fuzzing the image reader (gsplat_kit.scene.images) with mutations of a real photo (cup_kwrous), as
JPEG and as PNG: truncations at every segment / chunk boundary, header fields set to zero or to sizes
no memory holds, broken markers, random byte flips (PNG's CRCs catch every one), files that are not
images. Each case must end in ImageError naming the file, within seconds, writing nothing outside the
test's folder. (Not here: bytes changed inside a JPEG's entropy-coded scan. JPEG carries no checksum,
and libjpeg decodes such a scan to a damaged picture with only a warning on stderr, which OpenCV does
not report; no reader can tell it from a real photo.)"""
from __future__ import annotations

import os
import struct
import zlib

import cv2
import numpy as np
import pytest

from fuzz_helpers import expect_error, flipped
from gsplat_kit.scene.images import ImageError, read_image, read_mask, read_scaled

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUP = os.path.join(ROOT, "..", "shared", "data", "cup_kwrous")


@pytest.fixture(scope="module")
def photo():
    if not os.path.isdir(CUP):
        pytest.skip(f"{CUP} is not here")
    name = sorted(os.listdir(os.path.join(CUP, "images_4")))[0]
    with open(os.path.join(CUP, "images_4", name), "rb") as f:
        jpeg = f.read()
    png = cv2.imencode(".png", cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR))[1].tobytes()
    return jpeg, png


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GSPLAT_KIT_CACHE", str(tmp_path / "cache"))


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, offset, length) of each segment up to the start of scan."""
    out, pos = [], 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker, length = data[pos + 1], struct.unpack_from(">H", data, pos + 2)[0]
        out.append((marker, pos, length))
        if marker == 0xDA:
            break
        pos += 2 + length
    return out


def png_chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """(type, offset, data length) of each chunk."""
    out, pos = [], 8
    while pos + 8 <= len(data):
        length = struct.unpack_from(">I", data, pos)[0]
        out.append((data[pos + 4:pos + 8], pos, length))
        pos += 12 + length
    return out


def _with_ihdr(png: bytes, **fields) -> bytes:
    """The PNG with IHDR fields replaced and its CRC recomputed (so the reader sees the values)."""
    w, h, depth, ctype, comp, filt, inter = struct.unpack_from(">IIBBBBB", png, 16)
    vals = dict(width=w, height=h, depth=depth, ctype=ctype)
    vals.update(fields)
    body = b"IHDR" + struct.pack(">IIBBBBB", vals["width"], vals["height"], vals["depth"], vals["ctype"], comp, filt,
                                 inter)
    return png[:12] + body + struct.pack(">I", zlib.crc32(body)) + png[33:]


def _sof(data: bytes, **fields) -> bytes:
    _, pos, _ = next(s for s in jpeg_segments(data) if s[0] == 0xC0)
    out = bytearray(data)
    if "height" in fields:
        struct.pack_into(">H", out, pos + 5, fields["height"])
    if "width" in fields:
        struct.pack_into(">H", out, pos + 7, fields["width"])
    if "components" in fields:
        out[pos + 9] = fields["components"]
    return bytes(out)


def _cases(jpeg: bytes, png: bytes):
    segs = jpeg_segments(jpeg)
    sos = segs[-1][1]
    cases = [(f"jpeg cut at segment {m:#x} (byte {p})", ".jpg", jpeg[:p]) for m, p, _ in segs]
    cases += [(f"jpeg cut inside segment {m:#x}", ".jpg", jpeg[:p + 2 + n // 2]) for m, p, n in segs]
    cases += [
        ("jpeg cut in the scan", ".jpg", jpeg[:(sos + len(jpeg)) // 2]),
        ("jpeg without EOI", ".jpg", jpeg[:-2]),
        ("jpeg one byte", ".jpg", jpeg[:1]),
        ("jpeg height 0", ".jpg", _sof(jpeg, height=0)),
        ("jpeg width 0", ".jpg", _sof(jpeg, width=0)),
        ("jpeg 65500x65500", ".jpg", _sof(jpeg, height=65500, width=65500)),
        ("jpeg 7 components", ".jpg", _sof(jpeg, components=7)),
        ("jpeg SOI broken", ".jpg", b"\xff\x00" + jpeg[2:]),
        ("jpeg header only twice", ".jpg", jpeg[:sos] + jpeg[:sos]),
    ]
    chunks = png_chunks(png)
    cases += [(f"png cut at chunk {t.decode()} (byte {p})", ".png", png[:p]) for t, p, _ in chunks]
    cases += [(f"png cut inside chunk {t.decode()}", ".png", png[:p + 8 + n // 2]) for t, p, n in chunks]
    cases += [
        ("png signature only", ".png", png[:8]),
        ("png width 0", ".png", _with_ihdr(png, width=0)),
        ("png 100000x100000", ".png", _with_ihdr(png, width=100_000, height=100_000)),
        ("png 2^31 wide", ".png", _with_ihdr(png, width=2 ** 31 - 1)),
        ("png bit depth 3", ".png", _with_ihdr(png, depth=3)),
        ("png colour type 5", ".png", _with_ihdr(png, ctype=5)),
        ("png height +1", ".png", _with_ihdr(png, height=struct.unpack_from(">I", png, 20)[0] + 1)),
    ]
    cases += [(f"png flip seed {s}", ".png", flipped(png, s, count=1, lo=8)) for s in range(25)]
    cases += [
        ("empty file", ".jpg", b""),
        ("text named .jpg", ".jpg", b"this is not an image\n" * 20),
        ("json named .png", ".png", b'{"frames": []}'),
        ("zeros", ".png", bytes(4096)),
    ]
    return cases


def test_mutated_images_are_refused_naming_the_file(photo, tmp_path):
    jpeg, png = photo
    cases = _cases(jpeg, png)
    assert len(cases) >= 20
    h, w = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape[:2]
    for i, (label, ext, data) in enumerate(cases):
        path = tmp_path / f"case{i:03d}{ext}"
        path.write_bytes(data)
        expect_error(tmp_path, ImageError, path.name, read_image, str(path))
        expect_error(tmp_path, ImageError, path.name, read_mask, str(path))
        # the dataset's path: a downscaled read that would fill the images_N cache
        expect_error(tmp_path, ImageError, path.name, read_scaled, str(path), w // 2, h // 2)
    assert not (tmp_path / "cache").exists() or not os.listdir(tmp_path / "cache" / "resized")


def test_the_unmutated_photo_reads(photo, tmp_path):
    """The cases start from files that read (so each error above is the mutation's)."""
    jpeg, png = photo
    for ext, data in ((".jpg", jpeg), (".png", png)):
        (tmp_path / f"ok{ext}").write_bytes(data)
        img = read_image(str(tmp_path / f"ok{ext}"))
        assert img.shape == (150, 200, 3) and img.dtype == np.uint8
    a, b = read_image(str(tmp_path / "ok.jpg")), read_image(str(tmp_path / "ok.png"))
    assert np.array_equal(a, b)  # PNG holds the decoded JPEG losslessly, and both come back RGB


def test_the_guards_have_teeth(tmp_path):
    """The write watch and the time limit that every fuzz case runs under do catch what they promise."""
    import time

    from fuzz_helpers import CaseTimeout, guarded

    outside = tmp_path.parent / f"{tmp_path.name}-outside.txt"
    try:
        with pytest.raises(AssertionError, match="writes outside the test folder"):
            with guarded(tmp_path):
                outside.write_text("escaped")
    finally:
        outside.unlink(missing_ok=True)
    with guarded(tmp_path):
        (tmp_path / "inside.txt").write_text("fine")
    with pytest.raises(CaseTimeout):
        with guarded(tmp_path, seconds=0.2):
            time.sleep(5)
