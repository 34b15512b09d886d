"""Fuzzing the transforms.json reader with mutations of a real scene (four instant_ngp_fox frames, in
nerfstudio's layout: camera_model, applied_transform, ply_file_path, mask_path): wrong top-level and
field types, NaN/Inf and impossible intrinsics, singular matrices, truncations of the JSON at every
section boundary, non-UTF-8 text, deep nesting, point clouds claiming 10^12 vertices, paths leading
out of the scene. Each case must end in DatasetError naming transforms.json (or the file it points
to), within seconds, writing nothing outside the test's folder."""
from __future__ import annotations

import copy
import json
import os
import shutil

import cv2
import numpy as np
import pytest

from fuzz_helpers import expect_error, flipped, guarded
from gsplat_kit.scene import load_scene
from gsplat_kit.scene.dataset import DatasetError
from gsplat_kit.scene.images import ImageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOX = os.path.join(ROOT, "..", "shared", "data", "instant_ngp_fox")
NAN, INF = float("nan"), float("inf")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GSPLAT_KIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A four-frame nerfstudio-style scene from the fox capture, and its transforms.json as a dict."""
    if not os.path.isdir(FOX):
        pytest.skip(f"{FOX} is not here")
    root = tmp_path_factory.mktemp("fox4")
    with open(os.path.join(FOX, "transforms.json")) as f:
        meta = json.load(f)
    meta["frames"] = meta["frames"][:4]
    (root / "images").mkdir()
    (root / "masks").mkdir()
    mask = np.full((1920, 1080), 255, np.uint8)
    mask[:200] = 0
    for fr in meta["frames"]:
        shutil.copy(os.path.join(FOX, fr["file_path"]), root / fr["file_path"])
        fr["mask_path"] = "masks/" + os.path.basename(fr["file_path"]).replace(".jpg", ".png")
        cv2.imwrite(str(root / fr["mask_path"]), mask)
    meta["camera_model"] = "OPENCV"
    meta["applied_transform"] = [[1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, -1.0, 0, 0]]
    meta["ply_file_path"] = "sparse_pc.ply"
    _write_ply(root / "sparse_pc.ply", np.random.default_rng(0).normal(size=(50, 3)))
    (root / "transforms.json").write_text(json.dumps(meta))
    scene = load_scene(str(root), test_every=0)  # the unmutated scene reads
    assert len(scene.views) == 4 and scene.points.shape == (50, 3) and scene.views[0].mask_path
    return root, meta


def _write_ply(path, xyz, count=None, header_extra=""):
    lines = ["ply", "format ascii 1.0", f"element vertex {len(xyz) if count is None else count}", "property float x",
             "property float y", "property float z", "property uint8 red", "property uint8 green",
             "property uint8 blue", header_extra, "end_header"]
    body = [f"{x} {y} {z} 128 128 128" for x, y, z in xyz]
    path.write_text("\n".join([l for l in lines if l] + body) + "\n")


def _scene(tmp_path, base_root, text: bytes | str) -> str:
    """A fresh copy of the base scene whose transforms.json holds `text`."""
    root = tmp_path / "scene"
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(base_root, root, symlinks=True)
    data = text.encode() if isinstance(text, str) else text
    (root / "transforms.json").write_bytes(data)
    return str(root)


def _doc(meta, edit):
    m = copy.deepcopy(meta)
    edit(m)
    return json.dumps(m)


def _set(path, value):
    """An edit setting meta[path...] (keys and list indices) to value."""
    def edit(m):
        obj = m
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value
    return edit


def _del(path):
    def edit(m):
        obj = m
        for k in path[:-1]:
            obj = obj[k]
        del obj[path[-1]]
    return edit


F0 = ("frames", 0)
EDITS = [
    ("frames missing", _del(("frames",))),
    ("frames a dict", _set(("frames",), {"a": 1})),
    ("frames a string", _set(("frames",), "images/*.jpg")),
    ("frame a number", _set(F0, 7)),
    ("file_path missing", _del(F0 + ("file_path",))),
    ("file_path a number", _set(F0 + ("file_path",), 5)),
    ("file_path a list", _set(F0 + ("file_path",), ["images/0001.jpg"])),
    ("transform_matrix 3x3", _set(F0 + ("transform_matrix",), np.eye(3).tolist())),
    ("transform_matrix strings", _set(F0 + ("transform_matrix",), [["a"] * 4] * 4)),
    ("transform_matrix ragged", _set(F0 + ("transform_matrix",), [[1, 0, 0, 0], [0, 1, 0], [0, 0, 1, 0],
                                                                  [0, 0, 0, 1]])),
    ("transform_matrix NaN", _set(F0 + ("transform_matrix", 0, 3), NAN)),
    ("transform_matrix Inf", _set(F0 + ("transform_matrix", 1, 1), INF)),
    ("transform_matrix singular", _set(F0 + ("transform_matrix",), np.zeros((4, 4)).tolist())),
    ("transform_matrix a string", _set(F0 + ("transform_matrix",), "identity")),
    ("fl_x a string", _set(("fl_x",), "1375.5")),
    ("fl_x 0", _set(("fl_x",), 0)),
    ("fl_x negative", _set(("fl_x",), -10.0)),
    ("fl_x NaN", _set(("fl_x",), NAN)),
    ("fl_x true", _set(("fl_x",), True)),
    ("fl_y Inf per frame", _set(F0 + ("fl_y",), INF)),
    ("w 0", _set(("w",), 0)),
    ("w fractional", _set(("w",), 1080.5)),
    ("h a string", _set(("h",), "1920")),
    ("h 10^12", _set(("h",), 10 ** 12)),
    ("cx NaN", _set(("cx",), NAN)),
    ("k1 a string", _set(("k1",), "0.1")),
    ("p2 Inf", _set(("p2",), -INF)),
    ("no focal at all", lambda m: [m.pop(k) for k in ("fl_x", "fl_y", "camera_angle_x", "camera_angle_y")]),
    ("camera_angle_x 4 rad", lambda m: [m.pop(k) for k in ("fl_x", "fl_y")] and m.update(camera_angle_x=4.0)),
    ("camera_model EQUIRECTANGULAR", _set(("camera_model",), "EQUIRECTANGULAR")),
    ("camera_model a number", _set(("camera_model",), 3)),
    ("applied_transform singular", _set(("applied_transform",), np.zeros((3, 4)).tolist())),
    ("applied_transform 2x4", _set(("applied_transform",), np.zeros((2, 4)).tolist())),
    ("applied_transform NaN", _set(("applied_transform", 0, 0), NAN)),
    ("ply_file_path a number", _set(("ply_file_path",), 3)),
    ("ply_file_path outside", _set(("ply_file_path",), "../../sparse_pc.ply")),
    ("ply_file_path absolute", _set(("ply_file_path",), "/etc/passwd")),
    ("ply_file_path not a ply", _set(("ply_file_path",), "images/0001.jpg")),
    ("mask_path outside", _set(F0 + ("mask_path",), "../masks/x.png")),
    ("mask_path absolute", _set(F0 + ("mask_path",), "/etc/hostname")),
    ("mask_path a dict", _set(F0 + ("mask_path",), {"path": "m.png"})),
    ("file_path outside", _set(F0 + ("file_path",), "../../secret.png")),
    ("file_path absolute", _set(F0 + ("file_path",), "/etc/passwd")),
    ("file_path climbs back out", _set(F0 + ("file_path",), "images/../../secret.png")),
    ("file_path empty", _set(F0 + ("file_path",), "")),
    ("file_path NUL", _set(F0 + ("file_path",), "images/0001.jpg\u0000.png")),
    ("file_path through a symlink", _set(F0 + ("file_path",), "link/secret.png")),
]


def test_field_mutations_are_refused_naming_the_file(base, tmp_path):
    root, meta = base
    (tmp_path / "secret.png").write_bytes(b"not for you")
    os.symlink(tmp_path, root / "link") if not (root / "link").exists() else None
    assert len(EDITS) >= 20
    for label, edit in EDITS:
        scene = _scene(tmp_path, root, _doc(meta, edit))
        expect_error(tmp_path, DatasetError, "transforms.json", load_scene, scene)


def test_text_mutations_are_refused_naming_the_file(base, tmp_path):
    root, meta = base
    text = json.dumps(meta, indent=1)
    # the end of each section: the opening brace, each top-level field, each frame's opening, the
    # frames list, the first matrix row, the final brace
    boundaries = [1, text.index('"frames"'), text.index("[", text.index('"frames"')) + 1,
                  text.index('"file_path"'), text.index('"transform_matrix"'), text.index("[", text.index(
                      '"transform_matrix"')) + 3, text.index("]", text.index('"transform_matrix"')) + 1,
                  text.index('"mask_path"'), text.rindex("}", 0, len(text) - 1), len(text) - 1]
    cases = [(f"cut at {b}", text[:b].encode()) for b in boundaries]
    cases += [
        ("top level a list", json.dumps([meta]).encode()),
        ("top level a string", b'"transforms"'),
        ("top level null", b"null"),
        ("empty file", b""),
        ("not UTF-8", text.encode().replace(b'"frames"', b'"fr\xff\xfemes"')),
        ("UTF-16", text.encode("utf-16")),
        ("nested 100000 deep", b"[" * 100_000 + b"]" * 100_000),
        ("trailing garbage", text.encode() + b"\x00garbage"),
        ("single quotes", text.replace('"', "'").encode()),
        ("a comment line", b"// made by hand\n" + text.encode()),
        ("binary", flipped(b"\x89PNG" + bytes(200), 1, count=50)),
    ]
    assert len(cases) >= 20
    for label, data in cases:
        scene = _scene(tmp_path, root, data)
        expect_error(tmp_path, DatasetError, "transforms.json", load_scene, scene)


@pytest.mark.parametrize("label, ply", [
    ("10^12 vertices", dict(count=10 ** 12)),
    ("negative count", dict(count=-5)),
    ("count not a number", dict(count="many")),
    ("NaN vertex", dict(xyz=[(0.0, NAN, 1.0)] * 3)),
    ("no vertices", dict(xyz=[], count=0)),
    ("short body", dict(count=80)),
    ("unknown format", dict(header_extra="format klingon 1.0")),
])
def test_point_cloud_mutations_are_refused_naming_the_ply(base, tmp_path, label, ply):
    root, meta = base
    scene = _scene(tmp_path, root, json.dumps(meta))
    xyz = ply.pop("xyz", np.zeros((50, 3)).tolist())
    _write_ply(tmp_path / "scene" / "sparse_pc.ply", xyz, **ply)
    expect_error(tmp_path, DatasetError, "sparse_pc.ply", load_scene, scene)


def test_random_flips_read_or_are_refused(base, tmp_path):
    """A flipped byte may leave valid JSON with other numbers: that reads. Otherwise the error names a
    file: transforms.json (DatasetError), an image whose size no longer fits (ImageError), or a frame
    file that is not there (FileNotFoundError)."""
    root, meta = base
    text = json.dumps(meta).encode()
    refused = 0
    for seed in range(30):
        scene = _scene(tmp_path, root, flipped(text, seed, count=2))
        with guarded(tmp_path):
            try:
                load_scene(scene, test_every=0)
            except (DatasetError, ImageError, FileNotFoundError) as e:
                assert "transforms.json" in str(e) or scene in str(e), e
                refused += 1
    assert refused > 0
