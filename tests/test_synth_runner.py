"""synthesize(): resume == uninterrupted, a 2-process gloo split, and clear errors on bad input."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

from gsplat_kit.synth import runner
from gsplat_kit.synth.models import build_model, load_teacher, save_teacher
from synth_helpers import load_committed_teacher, teacher_path

# tiny runs: the point is the bookkeeping, not image quality
SMALL = dict(method="deep", num_images=30, batch_size=10, iterations=4, seed=3, progress=False)


def _pngs(folder):
    from PIL import Image

    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            if f.endswith(".png"):
                p = os.path.join(root, f)
                out[os.path.relpath(p, folder)] = np.asarray(Image.open(p))
    return out


class _Killed(Exception):
    pass


@pytest.fixture(scope="module")
def teacher():
    return load_committed_teacher()


def test_resume_after_interruption_gives_the_same_set(tmp_path, teacher):
    full = runner.synthesize(teacher, out=tmp_path / "full", **SMALL)
    assert full["complete"] and full["batches"] == 3

    def kill_after_first(b, log):
        if b == 0:
            raise _Killed  # the process dies right after batch 0 was committed

    with pytest.raises(_Killed):
        runner.synthesize(teacher, out=tmp_path / "resumed", on_batch_done=kill_after_first, **SMALL)
    # and a half-written batch of the dead process (PNG written, batch not committed)
    junk = tmp_path / "resumed" / ".tmp_batch_00001_99999"
    junk.mkdir()
    (junk / "airplane__00001_000.png").write_bytes(b"half")
    done = []
    res = runner.synthesize(teacher, out=tmp_path / "resumed", on_batch_done=lambda b, log: done.append(b), **SMALL)
    assert done == [1, 2], "the resumed run must skip the committed batch 0"
    assert res["complete"] and not junk.exists()
    a, b = _pngs(tmp_path / "full"), _pngs(tmp_path / "resumed")
    assert sorted(a) == sorted(b) and len(a) == 30
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    # class-balanced targets, one folder per teacher class
    counts = {c: sum(1 for k in a if k.startswith(c + "/")) for c in teacher[1]["classes"]}
    assert set(counts.values()) == {3}
    summary = json.loads((tmp_path / "resumed" / "losses.json").read_text())
    assert summary["batches_done"] == 3 and len(summary["per_batch"]) == 3


def test_resume_refuses_different_settings(tmp_path, teacher):
    runner.synthesize(teacher, out=tmp_path, **dict(SMALL, num_images=10))
    with pytest.raises(ValueError, match="different"):
        runner.synthesize(teacher, out=tmp_path, **dict(SMALL, num_images=10, iterations=5))


def _rank_main(rank, world, store, out, path):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        runner.synthesize(path, out=out, **dict(SMALL, num_images=40))
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_processes_split_the_batches(tmp_path):
    path = str(teacher_path())
    out = tmp_path / "split"
    torch.multiprocessing.spawn(_rank_main, args=(2, str(tmp_path / "store"), str(out), path), nprocs=2)
    recs = [json.loads((out / "batches" / f"batch_{b:05d}.json").read_text()) for b in range(4)]
    assert [r["rank"] for r in recs] == [0, 1, 0, 1]          # disjoint: b % world == rank
    assert json.loads((out / "losses.json").read_text())["complete"]
    split = _pngs(out)
    assert len(split) == 40
    # the same images as one process makes (up to float summation order across thread counts)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runner.synthesize(path, out=tmp_path / "single", **dict(SMALL, num_images=40))
    finally:
        torch.set_num_threads(threads)
    single = _pngs(tmp_path / "single")
    assert sorted(single) == sorted(split)
    for k in single:
        assert np.abs(single[k].astype(int) - split[k].astype(int)).max() <= 1, k


class _NoBN(nn.Module):
    num_classes = 10

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(8, 10))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("method", ["deep", "natural"])
def test_teacher_without_batchnorm_is_refused(tmp_path, method):
    with pytest.raises(ValueError, match="BatchNorm"):
        runner.synthesize(_NoBN(), **dict(SMALL, method=method, num_images=10, out=tmp_path))


def test_bad_weights_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_teacher(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match="junk.pt"):
        load_teacher(junk)
    with pytest.raises(ValueError, match="junk.pt"):
        runner.synthesize(str(junk), out=tmp_path / "o", **SMALL)
    ok = tmp_path / "r20.pt"
    save_teacher(build_model("resnet20"), "resnet20", ok)
    with pytest.raises(ValueError, match="resnet32"):
        load_teacher(ok, arch="resnet32")
    torch.save(build_model("resnet20").state_dict(), tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="architecture"):
        load_teacher(tmp_path / "bare.pt")
    assert load_teacher(tmp_path / "bare.pt", arch="resnet20")[1]["num_classes"] == 10


def test_wrong_image_size_and_method(tmp_path, teacher):
    with pytest.raises(ValueError, match="image_size 24"):
        runner.synthesize(teacher, out=tmp_path, image_size=24, **dict(SMALL, num_images=10))
    with pytest.raises(ValueError, match="unknown method"):
        runner.synthesize(teacher, out=tmp_path, **dict(SMALL, method="dream"))
    with pytest.raises(ValueError, match="no_such_field"):
        runner.synthesize(teacher, out=tmp_path, no_such_field=1, **SMALL)


def test_sigkilled_cli_run_resumes_to_the_same_set(tmp_path):
    """A real kill (SIGKILL, no clean-up) of `gsplat-kit synthesize`, then the same command again."""
    import signal
    import subprocess
    import sys
    import time

    path = str(teacher_path())
    argv = [sys.executable, "-m", "gsplat_kit.cli", "synthesize", "--teacher", path, "--method", "deep",
            "--num-images", "30", "--batch-size", "10", "--iterations", "25", "--seed", "3", "--threads", "1",
            "--no-progress", "--out"]
    out = tmp_path / "killed"
    proc = subprocess.Popen(argv + [str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "batches" / "batch_00000.json"
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists(), "the run died before committing its first batch"
    assert not (out / "losses.json").exists(), "killed too late to test anything"
    assert subprocess.run(argv + [str(out)], capture_output=True).returncode == 2   # a run is there
    assert subprocess.run(argv + [str(out), "--resume"], capture_output=True).returncode == 0
    assert subprocess.run(argv + [str(tmp_path / "whole")], capture_output=True).returncode == 0
    a, b = _pngs(tmp_path / "whole"), _pngs(out)
    assert sorted(a) == sorted(b) and len(a) == 30
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert not list(out.glob(".tmp_batch_*"))
