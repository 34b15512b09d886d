"""The train / eval / render / export verbs: --help, errors, and the video path."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from gsplat_kit.common.atomic import TMP_TAG
from gsplat_kit.train.video import camera_path, render_video
from train_helpers import make_scene

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args):
    env = {**os.environ, "GSPLAT_KIT_ALLOW_STALE": os.environ.get("GSPLAT_KIT_ALLOW_STALE", "0")}
    return subprocess.run([sys.executable, "-m", "gsplat_kit.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=300)


@pytest.mark.parametrize("verb,needle", [("train", "--strategy"), ("eval", "--splats"), ("render", "--path"),
                                         ("export", "--format")])
def test_help(verb, needle):
    r = _cli(verb, "--help")
    assert r.returncode == 0, r.stderr
    assert needle in r.stdout and verb in r.stdout


def test_bad_input_is_a_clear_error(tmp_path):
    r = _cli("train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr
    r = _cli("export", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.splat"))
    assert r.returncode == 2 and "missing.pt" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "cfg.json"
    bad.write_text('{"stepz": 3}')
    r = _cli("train", "--config", str(bad), "--data", str(tmp_path), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "stepz" in r.stderr


def test_export_splat_from_checkpoint(tmp_path):
    from gsplat_kit.train.config import TrainConfig
    from gsplat_kit.train.trainer import Trainer

    tr = Trainer(TrainConfig(out=str(tmp_path), steps=3, progress=False), scene=make_scene(n_views=4, n_gauss=50))
    tr.train_steps()
    ck = tr.save_checkpoint()
    r = _cli("export", ck, "--out", str(tmp_path / "scene.splat"))
    assert r.returncode == 0, r.stderr
    rec = np.fromfile(tmp_path / "scene.splat", dtype=[("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4),
                                                        ("rot", "u1", 4)])
    assert len(rec) == 50
    # every centre of the checkpoint is in the file (sorted by size x opacity, so compare as sets)
    pos = tr.splats["means"].detach().numpy()
    assert np.allclose(np.sort(rec["pos"][:, 0]), np.sort(pos[:, 0]))
    assert np.allclose(np.sort(rec["scale"][:, 0]), np.sort(np.exp(tr.splats["scales"].detach().numpy()[:, 0])), rtol=1e-6)


def test_camera_path_is_smooth_closed_and_looks_at_the_focus():
    scene = make_scene(n_views=8, n_gauss=30)
    c2w = np.stack([v.camtoworld.numpy() for v in scene.train_views + scene.test_views])
    for kind in ("ellipse", "orbit"):
        path = camera_path(c2w, 60, kind)
        assert path.shape == (60, 4, 4)
        R = path[:, :3, :3]
        assert np.allclose(R @ R.transpose(0, 2, 1), np.eye(3), atol=1e-6)
        assert np.allclose(np.linalg.det(R), 1.0, atol=1e-6)
        centres = path[:, :3, 3]
        steps = np.linalg.norm(np.diff(np.concatenate([centres, centres[:1]]), axis=0), axis=1)
        assert steps.max() < 2.0 * steps.mean()            # even spacing, and it closes on itself
        # the ring of cameras looks at the origin: every frame's optical axis passes near it
        to_origin = -centres / np.linalg.norm(centres, axis=1, keepdims=True)
        assert np.all(np.sum(to_origin * path[:, :3, 2], axis=1) > 0.99)
        r = np.linalg.norm(centres[:, :2], axis=1)
        assert np.all((r > 2.5) & (r < 4.5))                # the cameras' radius is 3.5
    with pytest.raises(ValueError, match="ellipse"):
        camera_path(c2w, 10, "spiral")


def test_render_video(tmp_path):
    import imageio.v2 as imageio

    scene = make_scene(n_views=6, n_gauss=80)
    s = {"means": torch.tensor(scene.points), "scales": torch.full((80, 3), -2.5), "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(80, 1),
         "opacities": torch.full((80,), 2.0), "sh0": torch.rand(80, 1, 3), "shN": torch.zeros(80, 15, 3)}
    out = render_video(s, scene.train_views, str(tmp_path / "v.mp4"), n_frames=12, fps=12, progress=False)
    frames = imageio.mimread(out)
    assert len(frames) == 12 and frames[0].shape == (48, 64, 3)
    assert frames[0].std() > 5                               # something was rendered
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp") or TMP_TAG in f]
