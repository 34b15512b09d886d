"""What `gsplat-kit view` opens (.ply written the way the original 3DGS writes it, checkpoints, run
folders) and how it fails: a malformed file is reported in the terminal and the page, and the server
keeps running."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from gsplat_kit.viewer.app import ViewerApp
from gsplat_kit.viewer.source import SceneLoadError, load_viewer_scene
from gsplat_kit.viewer.synthetic import look_at_view, sphere_splats
from gsplat_kit.viewer.wsclient import ViserTestClient

ROOT = Path(__file__).resolve().parents[1]


def write_3dgs_ply(path: Path, splats: dict):
    """Writes the original 3DGS layout independently of gsplat_kit's writer (another tool's file)."""
    n = splats["means"].shape[0]
    rest = splats["shN"].transpose(1, 2).reshape(n, -1).numpy()   # channel-major, like 3DGS
    cols = {"x": splats["means"][:, 0], "y": splats["means"][:, 1], "z": splats["means"][:, 2]}
    cols.update({f"n{a}": torch.zeros(n) for a in "xyz"})
    cols.update({f"f_dc_{i}": splats["sh0"][:, 0, i] for i in range(3)})
    cols.update({f"f_rest_{i}": torch.from_numpy(rest[:, i]) for i in range(rest.shape[1])})
    cols["opacity"] = splats["opacities"]
    cols.update({f"scale_{i}": splats["scales"][:, i] for i in range(3)})
    cols.update({f"rot_{i}": splats["quats"][:, i] for i in range(4)})
    data = np.empty(n, dtype=[(k, "<f4") for k in cols])
    for k, v in cols.items():
        data[k] = np.asarray(v, np.float32)
    header = "ply\nformat binary_little_endian 1.0\nelement vertex %d\n%send_header\n" % (
        n, "".join(f"property float {k}\n" for k in cols))
    path.write_bytes(header.encode() + data.tobytes())


def write_cameras_json(path: Path, views):
    path.write_text(json.dumps([
        {"id": i, "img_name": v.name, "width": v.width, "height": v.height,
         "position": v.camtoworld[:3, 3].tolist(), "rotation": v.camtoworld[:3, :3].tolist(),
         "fx": float(v.K[0, 0]), "fy": float(v.K[1, 1])} for i, v in enumerate(views)]))


def test_opens_3dgs_ply_run_folder_and_checkpoint(tmp_path):
    splats = sphere_splats(500, sh_degree=3)
    run = tmp_path / "run"
    (run / "point_cloud" / "iteration_7000").mkdir(parents=True)
    write_3dgs_ply(run / "point_cloud" / "iteration_7000" / "point_cloud.ply", splats)
    views = [look_at_view([0, -1, -3], [0, 0, 0], [0, -1, 0], 64, 48, 40, f"cam{i}") for i in range(2)]
    write_cameras_json(run / "cameras.json", views)

    scene = load_viewer_scene(run)                     # the original 3DGS output layout
    assert scene.num_gaussians == 500 and scene.sh_degree == 3 and len(scene.views) == 2
    for k in ("means", "scales", "quats", "opacities", "sh0", "shN"):
        torch.testing.assert_close(scene.splats[k], splats[k], msg=f"{k} differs after the .ply round trip")
    np.testing.assert_allclose(scene.views[1].camtoworld, views[1].camtoworld, atol=1e-6)

    # a checkpoint written by the trainer (Adam moments, RNG states with numpy arrays): opened without
    # unpickling arbitrary objects
    from gsplat_kit.train.checkpoint import save_checkpoint

    params = {k: torch.nn.Parameter(v.clone()) for k, v in splats.items()}
    opt = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    sum(p.sum() for p in params.values()).backward()
    for o in opt.values():
        o.step()
    ckpt = tmp_path / "ckpts" / "ckpt_000100.pt"
    save_checkpoint(str(ckpt), step=100, splats=params, optimizers=opt, strategy_state={"count": torch.zeros(500)},
                    sampler_state={"gen": torch.Generator().get_state(), "perm": [1, 0], "pos": 1, "n": 2},
                    config={"data": ""}, elapsed=1.0)
    scene = load_viewer_scene(ckpt)
    torch.testing.assert_close(scene.splats["means"], params["means"].detach())
    # and a file that would need real unpickling is refused with a clear message
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    torch.save({"splats": splats, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(SceneLoadError, match="evil.pt.*does not unpickle"):
        load_viewer_scene(tmp_path / "evil.pt")


def test_gsplat_kit_run_folder_shows_training_cameras(tmp_path):
    """A run folder as `gsplat-kit train` leaves it: point_cloud.ply (gsplat_kit's writer) and config.json
    naming the data; the training split's cameras become clickable frusta."""
    from gsplat_kit.scene import load_scene, save_ply

    data = ROOT.parent / "shared" / "data" / "statue_bartoszek"
    if not data.is_dir():
        pytest.skip(f"{data} not present")
    splats = sphere_splats(400, sh_degree=1)
    save_ply(str(tmp_path / "point_cloud.ply"), splats)
    (tmp_path / "config.json").write_text(json.dumps({"data": str(data), "data_factor": 1, "test_every": 8}))
    scene = load_viewer_scene(tmp_path)
    expected = load_scene(str(data), test_every=8).train_views
    assert scene.num_gaussians == 400 and len(scene.views) == len(expected) > 10
    np.testing.assert_allclose(scene.views[3].camtoworld, np.asarray(expected[3].camtoworld, np.float64), atol=1e-5)
    app = ViewerApp("127.0.0.1", 0, render_path="client", device="cpu")
    try:
        assert app.load(str(tmp_path), background=False) is True
        assert len(app.frusta.handles) == len(expected)
    finally:
        app.close()


def test_bad_inputs_have_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.ply"):
        load_viewer_scene(tmp_path / "nowhere.ply")
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SceneLoadError, match="broken.pt"):
        load_viewer_scene(bad)
    nan = sphere_splats(10)
    nan["means"][3, 1] = float("nan")
    torch.save({"splats": nan}, tmp_path / "nan.pt")
    with pytest.raises(SceneLoadError, match="nan.pt.*means.*NaN"):
        load_viewer_scene(tmp_path / "nan.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SceneLoadError, match="no point_cloud.ply"):
        load_viewer_scene(tmp_path / "empty")


def _truncated_ply(path: Path):
    write_3dgs_ply(path, sphere_splats(100))
    path.write_bytes(path.read_bytes()[:-1000])   # the header promises more vertices than the file holds


def test_malformed_ply_is_reported_in_page_and_server_keeps_running(tmp_path, capsys):
    bad = tmp_path / "malformed.ply"
    _truncated_ply(bad)
    good = tmp_path / "good.ply"
    write_3dgs_ply(good, sphere_splats(300))
    app = ViewerApp("127.0.0.1", 0, render_path="server", device="cpu")
    try:
        with ViserTestClient(app.url) as client:
            v = look_at_view([0, -0.8, -2.2], [0, 0, 0], [0, -1, 0], 160, 120, 50)
            client.send_camera(v.camtoworld, v.fov_y, 160, 120)
            app.wait_for_client(10)
            assert app.load(str(bad), background=False) is False
            err = capsys.readouterr().err
            assert "error:" in err and "malformed.ply" in err and "Traceback" not in err
            assert app.panels.error.visible and "Error" in app.panels.error.content
            assert "malformed.ply" in app.panels.error.content
            note = client.wait_message(lambda m: m["type"] == "NotificationShowMessage"
                                       and "malformed.ply" in m["props"]["body"], 10)
            assert note is not None, "the page was not told about the malformed file"
            # still serving: the page loads, and the next (good) file opens and renders
            assert urllib.request.urlopen(app.url, timeout=10).status == 200
            n = len(client.frames)
            assert app.load(str(good), background=False) is True
            assert app.scene.num_gaussians == 300 and not app.panels.error.visible
            assert client.wait_frames(n + 1, 30)
    finally:
        app.close()


@pytest.mark.parametrize("kind", ["malformed", "good"])
def test_cli_view_prints_url_and_survives_bad_file(tmp_path, kind):
    path = tmp_path / f"{kind}.ply"
    if kind == "malformed":
        _truncated_ply(path)
    else:
        write_3dgs_ply(path, sphere_splats(200))
    proc = subprocess.Popen([sys.executable, "-m", "gsplat_kit.cli", "view", str(path), "--port", "0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url, t_end = None, time.time() + 60
        while url is None and time.time() < t_end:
            line = proc.stdout.readline()
            if not line:
                break
            if "gsplat_kit viewer: http://127.0.0.1:" in line:
                url = line.split("viewer: ")[1].split()[0]
        assert url, "the CLI did not print the URL"
        expect = proc.stderr if kind == "malformed" else proc.stdout
        line = ""
        while time.time() < t_end:
            line = expect.readline()
            if ("error:" in line) if kind == "malformed" else line.startswith("loaded "):
                break
        if kind == "malformed":
            assert "error:" in line and "malformed.ply" in line, line
        else:
            assert "200 Gaussians" in line, line
        time.sleep(0.5)
        assert proc.poll() is None, "the server exited"
        assert urllib.request.urlopen(url, timeout=10).status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)
