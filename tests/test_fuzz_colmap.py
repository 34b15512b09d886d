"""Fuzzing the COLMAP readers (binary and text) with mutations of a real model (statue_bartoszek):
truncations at every section boundary, huge counts, NaN/Inf and impossible intrinsics, wrong types,
non-UTF-8 bytes, path tricks. Each case must end in ColmapError naming the mutated file, within
seconds, writing nothing outside the test's folder. Random byte flips (fixed seeds) may leave a valid
model (a flipped colour byte): those must read or end in ColmapError, nothing else."""
from __future__ import annotations

import os
import re
import shutil
import struct

import pytest

from fuzz_helpers import expect_error, flipped, outcome
from gsplat_kit.scene import ColmapError, load_scene, read_model, write_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATUE = os.path.join(ROOT, "..", "shared", "data", "statue_bartoszek")
NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    if not os.path.isdir(STATUE):
        pytest.skip(f"{STATUE} is not here")
    base = tmp_path_factory.mktemp("colmap_src")
    shutil.copytree(os.path.join(STATUE, "sparse", "0"), base / "bin")
    model = read_model(str(base / "bin"))
    write_model(model, str(base / "txt"), ext=".txt")
    files = {f: (base / "bin" / f).read_bytes() for f in ("cameras.bin", "images.bin", "points3D.bin")}
    files.update({f: (base / "txt" / f).read_bytes() for f in ("cameras.txt", "images.txt", "points3D.txt")})
    return model, files


def _mutated(tmp_path, files, name, data) -> str:
    """A model folder holding the original files of `name`'s encoding with `name` replaced by `data`."""
    ext = os.path.splitext(name)[1]
    d = tmp_path / "model"
    d.mkdir(exist_ok=True)
    for f, content in files.items():
        if f.endswith(ext):
            (d / f).write_bytes(data if f == name else content)
    return str(d)


# ---- binary ----------------------------------------------------------------------------------------

def _bin_layout(model):
    """Byte offsets of the sections of the first records (cameras, images, points3D)."""
    cam = next(iter(model.cameras.values()))
    im = next(iter(model.images.values()))
    name_at = 8 + 4 + 56 + 4
    n2d_at = name_at + len(im.name.encode()) + 1
    pts = model.points
    return {"cam_rec": 24 + 8 * len(cam.params), "name_at": name_at, "n2d_at": n2d_at, "n2d": len(im.xys),
            "track_at": 8 + 8 + 24 + 3 + 8, "track_len": len(pts.tracks[0])}


def _patch(data: bytes, at: int, fmt: str, *values) -> bytes:
    out = bytearray(data)
    struct.pack_into("<" + fmt, out, at, *values)
    return bytes(out)


def _bin_cases(model, files):
    L = _bin_layout(model)
    cams, ims, pts = files["cameras.bin"], files["images.bin"], files["points3D.bin"]
    rec = L["cam_rec"]
    second_cam = 8 + rec
    first_cam_id = next(iter(model.cameras))
    cases = []
    # truncations at each section boundary of the first records, and one byte short of the end
    for cut in (0, 4, 8, 12, 16, 24, 8 + 24, 8 + 24 + 8, 8 + rec, len(cams) - 1):
        cases.append((f"cameras.bin cut at {cut}", "cameras.bin", cams[:cut]))
    for cut in (8, 12, 8 + 4 + 32, 8 + 4 + 56, 8 + 68, L["name_at"] + 2, L["n2d_at"], L["n2d_at"] + 8,
                L["n2d_at"] + 8 + 24 * (L["n2d"] // 2) + 5, len(ims) - 1):
        cases.append((f"images.bin cut at {cut}", "images.bin", ims[:cut]))
    for cut in (8, 16, 8 + 8 + 24, 8 + 8 + 27, 8 + 43, L["track_at"] + 8, L["track_at"] + 8 + 4 * L["track_len"],
                len(pts) - 1):
        cases.append((f"points3D.bin cut at {cut}", "points3D.bin", pts[:cut]))
    # counts the file cannot hold (refused before allocating), one too many, one too few
    for f, data in (("cameras.bin", cams), ("images.bin", ims), ("points3D.bin", pts)):
        n = struct.unpack_from("<Q", data)[0]
        for claim in (10 ** 12, 2 ** 64 - 1, n + 1, n - 1):
            cases.append((f"{f} count {claim}", f, _patch(data, 0, "Q", claim)))
    cases += [
        ("n2d 10^12", "images.bin", _patch(ims, L["n2d_at"], "Q", 10 ** 12)),
        ("track length 10^12", "points3D.bin", _patch(pts, L["track_at"], "Q", 10 ** 12)),
        ("focal NaN", "cameras.bin", _patch(cams, 8 + 24, "d", NAN)),
        ("focal Inf", "cameras.bin", _patch(cams, 8 + 24, "d", INF)),
        ("focal 0", "cameras.bin", _patch(cams, 8 + 24, "d", 0.0)),
        ("focal negative", "cameras.bin", _patch(cams, 8 + 24, "d", -500.0)),
        ("principal point NaN", "cameras.bin", _patch(cams, 8 + 24 + 8 * (rec // 8 - 4), "d", NAN)),
        ("width 0", "cameras.bin", _patch(cams, 8 + 8, "Q", 0)),
        ("height 2^63", "cameras.bin", _patch(cams, 8 + 16, "Q", 2 ** 63)),
        ("unknown model 99", "cameras.bin", _patch(cams, 8 + 4, "i", 99)),
        ("model -1", "cameras.bin", _patch(cams, 8 + 4, "i", -1)),
        ("duplicate camera id", "cameras.bin", _patch(cams, second_cam, "i", first_cam_id)),
        ("qvec NaN", "images.bin", _patch(ims, 8 + 4, "d", NAN)),
        ("tvec Inf", "images.bin", _patch(ims, 8 + 4 + 32, "d", INF)),
        ("qvec zero", "images.bin", _patch(ims, 8 + 4, "dddd", 0.0, 0.0, 0.0, 0.0)),
        ("dangling camera id", "images.bin", _patch(ims, 8 + 4 + 56, "i", 987654)),
        ("name not UTF-8", "images.bin", _patch(ims, L["name_at"], "2s", b"\xff\xfe")),
        ("name unterminated", "images.bin", ims[:L["n2d_at"] - 1]),
        ("point NaN", "points3D.bin", _patch(pts, 8 + 8, "d", NAN)),
        ("point Inf", "points3D.bin", _patch(pts, 8 + 8 + 16, "d", -INF)),
        ("empty cameras.bin", "cameras.bin", b""),
        ("text in a .bin", "cameras.bin", files["cameras.txt"]),
    ]
    return cases


def test_binary_mutations_are_refused_naming_the_file(models, tmp_path):
    model, files = models
    cases = _bin_cases(model, files)
    assert len(cases) >= 20
    for label, name, data in cases:
        d = _mutated(tmp_path, files, name, data)
        expect_error(tmp_path, ColmapError, name, read_model, d)


def test_binary_random_flips_read_or_are_refused(models, tmp_path):
    _, files = models
    seen = {}
    for name in ("cameras.bin", "images.bin", "points3D.bin"):
        data = files[name]
        for seed in range(25):
            # flips in the first records, where the counts, ids, models and lengths are
            d = _mutated(tmp_path, files, name, flipped(data, seed, count=2, hi=200))
            seen.setdefault(name, []).append(outcome(tmp_path, ColmapError, name, read_model, d))
    for name, results in seen.items():
        assert "refused" in results, f"{name}: no flip was caught"


# ---- text ------------------------------------------------------------------------------------------

def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def _replace_field(data: bytes, line_no: int, field: int, value: str) -> bytes:
    """The `field`-th whitespace-separated value of the `line_no`-th data (non-comment) line set to `value`."""
    lines = _lines(data)
    data_lines = [i for i, l in enumerate(lines) if l.strip() and not l.startswith(b"#")]
    parts = lines[data_lines[line_no]].split(b" ")
    parts[field] = value.encode()
    lines[data_lines[line_no]] = b" ".join(parts)
    return b"\n".join(lines)


def _text_cases(files):
    cams, ims, pts = files["cameras.txt"], files["images.txt"], files["points3D.txt"]
    cases = []
    for f, data in (("cameras.txt", cams), ("images.txt", ims), ("points3D.txt", pts)):
        lines = _lines(data)
        header = sum(1 for l in lines if l.startswith(b"#"))
        records = [i for i in range(header, len(lines)) if lines[i].strip()]
        # the last record line (images.txt: the last image line; its 2D points line follows)
        last = header + 2 * (len(_lines(data)[header:]) // 2 - 1) if f == "images.txt" else records[-1]
        cases += [(f"{f} cut after the header", f, b"\n".join(lines[:header]) + b"\n"),
                  (f"{f} cut inside the first record", f,
                   b"\n".join(lines[:header] + [b" ".join(lines[header].split()[:3])])),
                  (f"{f} cut after the first record", f, b"\n".join(lines[:header + (2 if f == "images.txt" else 1)])),
                  (f"{f} last record cut short", f, b"\n".join(lines[:last] + [b" ".join(lines[last].split()[:3])])),
                  (f"{f} count 10^12", f, re.sub(rb"(# Number of \w+: )\d+", rb"\g<1>1000000000000", data)),
                  (f"{f} not UTF-8", f, data.replace(b"\n", b"\n\xff\xfe", 5)),
                  (f"{f} binary bytes", f, files[f.replace(".txt", ".bin")])]
    cases += [
        ("focal nan", "cameras.txt", _replace_field(cams, 0, 4, "nan")),
        ("focal inf", "cameras.txt", _replace_field(cams, 0, 4, "inf")),
        ("focal 0", "cameras.txt", _replace_field(cams, 0, 4, "0")),
        ("focal -3", "cameras.txt", _replace_field(cams, 0, 4, "-3")),
        ("width 0", "cameras.txt", _replace_field(cams, 0, 2, "0")),
        ("width -640", "cameras.txt", _replace_field(cams, 0, 2, "-640")),
        ("width abc", "cameras.txt", _replace_field(cams, 0, 2, "abc")),
        ("height 10^30", "cameras.txt", _replace_field(cams, 0, 3, "1" + "0" * 30)),
        ("model BANANA", "cameras.txt", _replace_field(cams, 0, 1, "BANANA")),
        ("params missing", "cameras.txt", _replace_field(cams, 0, 7, "")),
        ("duplicate camera", "cameras.txt", cams + _lines(cams)[-2] + b"\n"),
        ("qw nan", "images.txt", _replace_field(ims, 0, 1, "nan")),
        ("tx inf", "images.txt", _replace_field(ims, 0, 5, "inf")),
        ("image id x", "images.txt", _replace_field(ims, 0, 0, "x")),
        ("dangling camera", "images.txt", _replace_field(ims, 0, 8, "987654")),
        ("2D point nan", "images.txt", _replace_field(ims, 1, 0, "nan")),
        ("point x nan", "points3D.txt", _replace_field(pts, 0, 1, "nan")),
        ("colour 300", "points3D.txt", _replace_field(pts, 0, 4, "300")),
        ("odd track", "points3D.txt", _replace_field(pts, 0, 8, "")),
        ("point id 2^70", "points3D.txt", _replace_field(pts, 0, 0, str(2 ** 70))),
    ]
    return cases


def test_text_mutations_are_refused_naming_the_file(models, tmp_path):
    _, files = models
    cases = _text_cases(files)
    assert len(cases) >= 20
    for label, name, data in cases:
        assert data != files[name], label
        d = _mutated(tmp_path, files, name, data)
        expect_error(tmp_path, ColmapError, name, read_model, d, ext=".txt")


def test_text_random_flips_read_or_are_refused(models, tmp_path):
    _, files = models
    for name in ("cameras.txt", "images.txt", "points3D.txt"):
        results = [outcome(tmp_path, ColmapError, name, read_model,
                           _mutated(tmp_path, files, name, flipped(files[name], seed, count=3)), ".txt")
                   for seed in range(20)]
        assert "refused" in results, f"{name}: no flip was caught"


# ---- paths from the model ---------------------------------------------------------------------------

@pytest.mark.parametrize("ext", [".bin", ".txt"])
@pytest.mark.parametrize("trick", ["../../secret.png", "/etc/passwd", "sub/../../secret.png", "link/secret.png", ""])
def test_image_names_cannot_leave_the_images_folder(models, tmp_path, ext, trick):
    model, _ = models
    scene = tmp_path / "scene"
    (scene / "images").mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(b"not for you")
    os.symlink(tmp_path, scene / "images" / "link")  # a folder inside images/ that points outside
    first = next(iter(model.images.values()))
    original = first.name
    try:
        first.name = trick
        write_model(model, str(scene / "sparse" / "0"), ext=ext)
    finally:
        first.name = original
    expect_error(tmp_path, ColmapError, f"images{ext}", load_scene, str(scene))
