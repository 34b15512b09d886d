"""SfM from raw photos (gsplat_kit.sfm): real photos with ground-truth cameras (Strecha fountain-P11),
the embedded demo scene, and the errors promised for unusable input.

Runtime on the shared 2-core box (measured 17:30 UTC, other jobs running): fountain ~41 s, demo ~31 s,
the error cases ~2 s.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from gsplat_kit.scene import load_scene, read_model
from gsplat_kit.sfm import (SfMError, align_centres, json_centres, model_centres, run_sfm, strecha_centres,
                            umeyama)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data")
FOUNTAIN = os.path.join(DATA, "strecha_fountain_p11")
DEMO = os.path.join(ROOT, "data", "demo_scene")
DEMO_GT = os.path.join(DEMO, "cameras_gt.json")


@pytest.fixture(scope="module")
def fountain_sfm(tmp_path_factory):
    if not os.path.isdir(os.path.join(FOUNTAIN, "images_25")):
        pytest.skip("../shared/data/strecha_fountain_p11 is not here")
    out = str(tmp_path_factory.mktemp("fountain_sfm"))
    return out, run_sfm(os.path.join(FOUNTAIN, "images_25"), out)


@pytest.fixture(scope="module")
def demo_sfm(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo_sfm"))
    return out, run_sfm(os.path.join(DEMO, "images"), out)


def test_umeyama_recovers_a_similarity():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(20, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    R = q * np.sign(np.linalg.det(q))
    dst = 2.5 * src @ R.T + np.array([1.0, -2.0, 0.5])
    s, R2, t = umeyama(src, dst)
    assert s == pytest.approx(2.5) and np.allclose(R2, R) and np.allclose(t, [1.0, -2.0, 0.5])


@pytest.mark.slow
def test_fountain_registers_all_and_matches_ground_truth(fountain_sfm):
    out, summary = fountain_sfm
    assert summary["num_registered"] == summary["num_images"] == 11, summary
    assert summary["num_points"] > 1000 and summary["mean_reprojection_error"] < 1.0, summary
    with open(os.path.join(out, "sfm_summary.json")) as fh:
        assert json.load(fh)["num_registered"] == 11
    model = read_model(os.path.join(out, "sparse", "0"))
    assert all(c.model == "PINHOLE" for c in model.cameras.values())  # undistorted for training
    gt, est = strecha_centres(FOUNTAIN), model_centres(model)
    names = sorted(gt)
    assert sorted(est) == names
    r = align_centres(np.stack([est[n] for n in names]), np.stack([gt[n] for n in names]))
    # Measured: max 8.9 mm, mean 5.8 mm after the similarity fit (cameras span 7.7 m around their
    # mean, 3-4 m apart). 5 cm (~5x the measured max, 0.65 % of the extent) is loose enough not to be
    # flaky; a wrong pose (a flipped or unregistered camera) is off by metres, random centres by ~7 m.
    assert r["max_error"] < 0.05, r["errors"]
    # and the undistorted scene loads for training, SfM points and all
    scene = load_scene(out)
    assert len(scene.views) == 11 and scene.points.shape[0] == summary["num_points"]
    assert scene.views[0].load_image().shape == (scene.views[0].height, scene.views[0].width, 3)


@pytest.mark.slow
def test_demo_scene_registers_all_views(demo_sfm):
    out, summary = demo_sfm
    n_photos = len(os.listdir(os.path.join(DEMO, "images")))
    assert n_photos >= 24
    assert summary["num_registered"] == summary["num_images"] == n_photos, summary
    assert summary["num_points"] > 500, summary
    gt, est = json_centres(DEMO_GT), model_centres(read_model(os.path.join(out, "sparse", "0")))
    names = sorted(gt)
    assert sorted(est) == names
    r = align_centres(np.stack([est[n] for n in names]), np.stack([gt[n] for n in names]))
    # Measured: max 0.010, mean 0.004 scene units (cameras on a ring of radius 3.3). 0.05 is 5x that.
    assert r["max_error"] < 0.05, r["errors"]
    scene = load_scene(out)
    assert len(scene.test_views) == (n_photos + 7) // 8


def test_no_images_is_a_clear_error(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "notes.txt").write_text("not a photo")
    with pytest.raises(SfMError, match="no images"):
        run_sfm(str(tmp_path / "photos"), str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run_sfm(str(tmp_path / "nowhere"), str(tmp_path / "out"))
    photos = tmp_path / "scene" / "images"
    photos.mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(photos / "a.png")
    with pytest.raises(ValueError, match="would replace the input photos"):  # sfm scene/images scene
        run_sfm(str(photos), str(tmp_path / "scene"))
    assert os.path.exists(photos / "a.png")
    with pytest.raises(ValueError, match="matcher"):
        run_sfm(os.path.join(DEMO, "images"), str(tmp_path / "out"), matcher="vocab")


def test_unrelated_photos_fail_with_few_registered(tmp_path):
    """Photos of noise share no geometry: SfM says how many it registered instead of a useless model."""
    rng = np.random.default_rng(0)
    d = tmp_path / "noise"
    d.mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(d / f"{i}.png")
    with pytest.raises(SfMError, match=r"(registered|no model)"):
        run_sfm(str(d), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out" / "sparse")  # nothing half-written
    assert not os.path.exists(tmp_path / "out" / ".sfm_work")  # nor the scratch database left behind


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    from gsplat_kit.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["sfm", str(tmp_path / "empty"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no images" in err and "Traceback" not in err


def test_sequential_matcher_on_video_like_frames(tmp_path):
    """14 consecutive demo views matched only with their neighbours (video mode) all register; a
    previous result in OUT is replaced, not mixed in. Measured ~8 s."""
    src = tmp_path / "frames"
    src.mkdir()
    names = sorted(os.listdir(os.path.join(DEMO, "images")))[:14]
    for n in names:
        shutil.copy(os.path.join(DEMO, "images", n), src / n)
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "images" / "stale.png").write_bytes(b"old")
    summary = run_sfm(str(src), str(out), matcher="sequential")
    assert summary["matcher"] == "sequential" and summary["num_registered"] == 14, summary
    assert sorted(os.listdir(out / "images")) == names
    assert not os.path.exists(out / ".sfm_work")
    gt, est = json_centres(DEMO_GT), model_centres(read_model(str(out / "sparse" / "0")))
    r = align_centres(np.stack([est[n] for n in names]), np.stack([gt[n] for n in names]))
    assert r["max_error"] < 0.05, r["errors"]


def test_demo_scene_files_are_consistent():
    """The embedded scene: 24-36 small photos, well under 2 MB, and known cameras that look at the object."""
    with open(os.path.join(DEMO, "cameras_gt.json")) as fh:
        gt = json.load(fh)
    names = sorted(os.listdir(os.path.join(DEMO, "images")))
    assert 24 <= len(names) <= 36 and names == sorted(os.path.basename(f["file"]) for f in gt["frames"])
    total = sum(os.path.getsize(os.path.join(DEMO, "images", n)) for n in names)
    assert total < 1.5e6, total
    K = np.array(gt["K"])
    for n in names:
        with Image.open(os.path.join(DEMO, "images", n)) as im:
            assert im.size == (gt["width"], gt["height"])
    for fr in gt["frames"]:
        w2c = np.array(fr["world_to_camera"])
        assert np.allclose(w2c[:3, :3] @ w2c[:3, :3].T, np.eye(3), atol=1e-9)
        p = w2c[:3, :3] @ np.array([0.0, 0.1, 0.35]) + w2c[:3, 3]  # the look-at target
        u, v = (K @ p)[:2] / p[2]
        assert p[2] > 0 and abs(u - gt["width"] / 2) < 1 and abs(v - gt["height"] / 2) < 1


@pytest.mark.parametrize("opt, value", [("--max-image-size", "0"), ("--max-image-size", "abc"), ("--max-features", "0"),
                                        ("--max-features", "-5"), ("--threads", "0"), ("--threads", "-2"),
                                        ("--threads", "1.5")])
def test_cli_numeric_options_checked_at_parse_time(tmp_path, opt, value):
    """Out-of-range numbers are one line naming the option, exit 2, before any photo is read."""
    r = subprocess.run([sys.executable, "-m", "gsplat_kit.cli", "sfm", str(tmp_path / "photos"), str(tmp_path / "out"),
                        opt, value], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and opt in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()
