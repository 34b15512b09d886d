"""An output folder belongs to one training run (real data: statue_bartoszek at 1/8 size).

- a finished 400-step run: another `train` into its folder refuses (one line, exit 2) and leaves it as it was;
- `--overwrite` replaces it, only when the new run finishes;
- a second `train` while the first is still running refuses, naming the first;
- kill -9 during a checkpoint write, then `--resume`: the interrupted write's temporary is cleaned up and the
  run continues bit for bit (same parameters and Adam moments as the uninterrupted run).
"""
import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from gsplat_kit.cli import main
from gsplat_kit.common.atomic import TMP_TAG
from gsplat_kit.common.run_folder import LOCK, MARKER
from gsplat_kit.scene.splats import SPLAT_KEYS
from gsplat_kit.train import checkpoint as ckpt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATUE = os.path.join(os.path.dirname(ROOT), "shared", "data", "statue_bartoszek")
pytestmark = pytest.mark.skipif(not os.path.isdir(STATUE), reason=f"{STATUE} not present")
ENV = {**os.environ, "PYTHONPATH": ROOT, "OMP_WAIT_POLICY": "PASSIVE"}

STEPS = 400
# one thread: the same reduction order in every process, so runs compare bit for bit
ARGS = ["--data", STATUE, "--data-factor", "8", "--steps", str(STEPS), "--ckpt-every", "100", "--threads", "1",
        "--no-eval", "--no-progress", "--strategy-opt", "refine_start_iter=50", "--strategy-opt", "refine_every=50",
        "--strategy-opt", "reset_every=150"]


def _cli(argv, capsys):
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def _digest_tree(folder):
    h = {}
    for root, _, files in os.walk(folder):
        for f in files:
            if f != LOCK:
                p = os.path.join(root, f)
                h[os.path.relpath(p, folder)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return h


def _assert_same_state(ck_a, ck_b):
    a, b = ckpt.load_checkpoint(ck_a), ckpt.load_checkpoint(ck_b)
    assert a["step"] == b["step"] == STEPS
    for k in SPLAT_KEYS:
        assert torch.equal(a["splats"][k], b["splats"][k]), k
        sa, sb = a["optimizers"][k]["state"][0], b["optimizers"][k]["state"][0]
        for m in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa[m], sb[m]), (k, m)
    assert torch.equal(a["sampler"]["gen"], b["sampler"]["gen"])
    assert (a["sampler"]["perm"], a["sampler"]["pos"]) == (b["sampler"]["perm"], b["sampler"]["pos"])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """The scenario's first run: 400 steps into OUT, finished."""
    out = tmp_path_factory.mktemp("runs") / "a"
    threads = torch.get_num_threads()
    try:
        rc = main(["train", *ARGS, "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    return out


def test_a_second_train_into_a_finished_run_refuses(finished_run, capsys):
    before = _digest_tree(finished_run)
    assert "ckpts/ckpt_000400.pt" in before and "point_cloud.ply" in before and MARKER in before
    rc, _, err = _cli(["train", *ARGS, "--out", str(finished_run)], capsys)
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: --out")
    assert "previous train run" in err and "--resume" in err and "--overwrite" in err
    assert _digest_tree(finished_run) == before                # nothing of the first run was touched


def test_overwrite_replaces_the_run_when_it_finishes(finished_run, tmp_path, capsys):
    out = tmp_path / "b"
    rc, _, err = _cli(["train", *ARGS, "--out", str(out), "--steps", "30"], capsys)
    assert rc == 0, err
    rc, _, err = _cli(["train", *ARGS, "--out", str(out), "--steps", "20", "--ckpt-every", "0", "--overwrite"], capsys)
    assert rc == 0, err
    names = sorted(os.listdir(out))
    assert names == sorted([LOCK, MARKER, "ckpts", "config.json", "metrics.json", "point_cloud.ply"]), names
    assert [os.path.basename(p) for p in ckpt.list_checkpoints(str(out))] == ["ckpt_000020.pt"]   # 30's are gone
    rc, _, err = _cli(["train", *ARGS, "--out", str(out), "--resume", "--overwrite"], capsys)
    assert rc == 2 and "exclude each other" in err


def test_a_second_concurrent_train_refuses(tmp_path, capsys):
    out = tmp_path / "c"
    first = subprocess.Popen([sys.executable, "-m", "gsplat_kit.cli", "train", *ARGS, "--steps", "100000",
                              "--out", str(out)], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not (out / "config.json").exists():    # written once the first run has claimed the folder
            assert first.poll() is None, first.stderr.read().decode()
            assert time.time() < deadline, "the first run did not start"
            time.sleep(0.2)
        rc, _, err = _cli(["train", *ARGS, "--out", str(out)], capsys)
        assert rc == 2 and err.count("\n") == 1
        assert f"another gsplat-kit process (pid {first.pid}, train)" in err
        rc, _, err = _cli(["train", *ARGS, "--out", str(out), "--resume"], capsys)   # not even to resume it
        assert rc == 2 and f"pid {first.pid}" in err
    finally:
        first.kill()
        first.wait()


# kills its own process (SIGKILL, as kill -9) half-way through writing the checkpoint of step KILL_AT
_DYING_TRAIN = """
import os, signal, sys, torch
from gsplat_kit.cli import main
real_save = torch.save
def dying_save(obj, f, *a, **k):
    if isinstance(obj, dict) and obj.get("step") == int(os.environ["KILL_AT"]):
        f.write(b"PK\\x03\\x04 half a checkpoint"); f.flush(); os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *a, **k)
torch.save = dying_save
sys.exit(main(sys.argv[1:]))
"""


def test_resume_after_kill_9_continues_bit_for_bit(finished_run, tmp_path, capsys):
    out = tmp_path / "killed"
    r = subprocess.run([sys.executable, "-c", _DYING_TRAIN, "train", *ARGS, "--out", str(out)], cwd=ROOT,
                       env={**ENV, "KILL_AT": "200"}, capture_output=True, text=True, timeout=600)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert [os.path.basename(p) for p in ckpt.list_checkpoints(str(out))] == ["ckpt_000100.pt"]
    assert [n for n in os.listdir(out / "ckpts") if TMP_TAG in n], "the interrupted write left its temporary"
    # the killed run still owns the folder: a new run there refuses
    rc, _, err = _cli(["train", *ARGS, "--out", str(out)], capsys)
    assert rc == 2 and "--resume" in err
    threads = torch.get_num_threads()
    try:
        rc, _, err = _cli(["train", *ARGS, "--out", str(out), "--resume"], capsys)
    finally:
        torch.set_num_threads(threads)
    assert rc == 0, err
    assert not [n for n in os.listdir(out / "ckpts") if TMP_TAG in n]
    _assert_same_state(finished_run / "ckpts" / "ckpt_000400.pt", out / "ckpts" / "ckpt_000400.pt")
