"""The viewer's server fails fast on an address it cannot listen on: `gsplat-kit view` and `train --viewer`
print one line and exit 2 within seconds (viser alone would retry or wait forever)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gsplat_kit.common.errors import UserError
from gsplat_kit.viewer.synthetic import sphere_splats

ROOT = Path(__file__).resolve().parents[1]
CUP = ROOT.parent / "shared" / "data" / "cup_kwrous"
# Bounds well above what a busy 2-core machine takes (view and train check the address before importing
# torch or loading data: about 1.5 s; other view options are checked once torch is loaded), and far below
# viser's "forever".
VIEW_BOUND_S = 15.0
TRAIN_BOUND_S = 60.0


@pytest.fixture
def taken_port():
    """A port another program listens on, held for the test."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    yield s.getsockname()[1]
    s.close()


def _run(args, timeout=120):
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "gsplat_kit.cli", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return r, time.time() - t0


def _assert_one_line_exit_2(r, elapsed, bound, *needles):
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert "Traceback" not in r.stderr and elapsed < bound, elapsed


@pytest.mark.parametrize("case", ["port_out_of_range", "port_taken", "unresolvable_host"])
def test_cli_view_refuses_an_address_it_cannot_listen_on(case, taken_port, tmp_path):
    ply = tmp_path / "scene.ply"       # never opened: the address is checked first
    ply.write_bytes(b"")
    args = {"port_out_of_range": ["--port", "70000"],
            "port_taken": ["--port", str(taken_port)],
            "unresolvable_host": ["--host", "no-such-host.invalid", "--port", "0"]}[case]
    needle = {"port_out_of_range": "70000", "port_taken": str(taken_port),
              "unresolvable_host": "no-such-host.invalid"}[case]
    r, elapsed = _run(["view", str(ply), *args])
    _assert_one_line_exit_2(r, elapsed, VIEW_BOUND_S, needle)


def test_app_and_live_viewer_raise_user_errors_at_once(taken_port):
    from gsplat_kit.viewer.app import ViewerApp
    from gsplat_kit.viewer.live import LiveViewer

    for kwargs, needle in [({"port": 70000}, "70000"), ({"port": -1}, "-1"), ({"port": taken_port}, str(taken_port)),
                           ({"host": "no-such-host.invalid", "port": 0}, "no-such-host.invalid"),
                           ({"host": "203.0.113.7", "port": 0}, "203.0.113.7")]:   # not this machine's address
        t0 = time.time()
        with pytest.raises(UserError, match=needle):
            ViewerApp(render_path="client", device="cpu", **kwargs)
        with pytest.raises(UserError, match=needle):
            LiveViewer(sphere_splats(100), render_path="client", device="cpu", **kwargs)
        assert time.time() - t0 < 5.0, kwargs


def test_default_port_moves_on_when_taken_but_an_explicit_port_does_not(taken_port):
    from gsplat_kit.viewer.app import ViewerApp
    from gsplat_kit.viewer.server import DEFAULT_PORT

    app = ViewerApp("127.0.0.1", None, render_path="client", device="cpu")
    try:
        assert app.port >= DEFAULT_PORT
        with pytest.raises(UserError, match=str(app.port)):
            ViewerApp("127.0.0.1", app.port, render_path="client", device="cpu")
    finally:
        app.close()


@pytest.mark.skipif(not CUP.is_dir(), reason=f"{CUP} not present")
def test_cli_train_viewer_refuses_a_taken_port(taken_port, tmp_path):
    r, elapsed = _run(["train", "--data", str(CUP), "--data-factor", "4", "--out", str(tmp_path / "out"),
                       "--steps", "1", "--no-eval", "--no-progress", "--viewer", "--viewer-port", str(taken_port)])
    _assert_one_line_exit_2(r, elapsed, VIEW_BOUND_S, str(taken_port))
    assert not (tmp_path / "out").exists()  # refused before the output folder was claimed


@pytest.mark.parametrize("args, needle", [(["--device", "bogus"], "bogus"), (["--max-resolution", "0"], "--max-resolution"),
                                          (["--client-budget", "0"], "--client-budget")])
def test_cli_view_bad_options_are_one_line(args, needle, tmp_path):
    ply = tmp_path / "scene.ply"
    ply.write_bytes(b"")
    r, elapsed = _run(["view", str(ply), "--port", "0", *args])
    _assert_one_line_exit_2(r, elapsed, TRAIN_BOUND_S, needle)   # --device is checked once torch is loaded
