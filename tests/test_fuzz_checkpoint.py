"""Checkpoints are data: damaged, crafted or hostile checkpoint files end in a UserError naming the file
(never another exception, never a hang, never code run), whether training resumes from them or a verb
(export, eval, render, train --resume, a planted OUT/ckpts/ckpt_*.pt) reads them.

Damage (truncations at every section of the zip, bit flips inside its records) is caught by the zip reader,
the unpickler or the checkpoint's content digest; crafted files (valid digest, wrong content) by the
structure checks of `load_checkpoint` and the trainer's restore.
"""
import io
import os
import random
import signal
import struct
import zipfile

import pytest
import torch

from gsplat_kit.cli import main
from gsplat_kit.common.errors import UserError
from gsplat_kit.common.run_folder import MARKER, RunFolder
from gsplat_kit.train import checkpoint as ckpt
from gsplat_kit.train.config import TrainConfig
from gsplat_kit.train.trainer import Trainer
from train_helpers import make_scene

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATUE = os.path.join(os.path.dirname(ROOT), "shared", "data", "statue_bartoszek")
CASE_TIMEOUT_S = 60
FAST = dict(refine_start_iter=4, refine_every=4, reset_every=100)


def _cfg(out, **kw):
    return TrainConfig(out=str(out), steps=20, ckpt_every=0, eval=False, progress=False, strategy_options=dict(FAST), **kw)


@pytest.fixture(scope="module")
def scene():
    return make_scene(n_views=5, n_gauss=60)


@pytest.fixture(scope="module")
def good(scene, tmp_path_factory):
    """A real checkpoint after 10 steps (Adam moments, per-Gaussian statistics and every RNG state set)."""
    folder = tmp_path_factory.mktemp("good")
    tr = Trainer(_cfg(folder / "run"), scene=scene)
    tr.train_steps(until=10)
    path = tr.save_checkpoint(str(folder / "ckpt_000010.pt"))
    return path


# ---- damaged bytes ----------------------------------------------------------------------------------

def _records(data: bytes):
    """(start, end) of every stored record's bytes, and the zip's section boundaries."""
    z = zipfile.ZipFile(io.BytesIO(data))
    spans = []
    for info in z.infolist():
        name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
        start = info.header_offset + 30 + name_len + extra_len
        spans.append((start, start + info.compress_size))
    central = data.rfind(b"PK\x01\x02", 0, data.rfind(b"PK\x05\x06"))
    return spans, sorted({0, *[s for s, _ in spans], *[e for _, e in spans], central, data.rfind(b"PK\x05\x06")})


def _damaged(data: bytes) -> dict:
    spans, bounds = _records(data)
    cases = {"empty": b"", "not a zip": bytes(random.Random(1).randrange(256) for _ in range(4096)),
             "text": b"step=10\nsplats=...\n"}
    for i, b in enumerate(bounds):           # truncated at every section boundary (and just past it)
        cases[f"truncated at boundary {i} ({b})"] = data[:b]
        cases[f"truncated at boundary {i} + 7"] = data[:b + 7]
    rng = random.Random(0)
    weights = [e - s for s, e in spans]
    for i in range(12):                      # one flipped bit inside a stored record
        s, e = rng.choices(spans, weights=weights)[0]
        pos = rng.randrange(s, e)
        b = bytearray(data)
        b[pos] ^= 1 << rng.randrange(8)
        cases[f"bit flip {i} at {pos}"] = bytes(b)
    z = io.BytesIO()
    with zipfile.ZipFile(z, "w") as w:
        w.writestr("archive/readme.txt", "a zip, but not a torch file")
    cases["zip without data.pkl"] = z.getvalue()
    return cases


# ---- crafted content (a valid digest over a wrong structure) ----------------------------------------

def _set(path, value):
    def edit(ck):
        d = ck
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value(d[path[-1]]) if callable(value) else value
    return edit


def _drop(path):
    def edit(ck):
        d = ck
        for k in path[:-1]:
            d = d[k]
        del d[path[-1]]
    return edit


CRAFTED = {
    "top level is a list": lambda ck: ["not", "a", "dict"],
    "no splats": _drop(["splats"]),
    "no digest": None,   # handled below: saved without a digest
    "step negative": _set(["step"], -3),
    "step a string": _set(["step"], "10"),
    "means wrong shape": _set(["splats", "means"], lambda t: t[:, :2].contiguous()),
    "sh0 NaN": _set(["splats", "sh0"], lambda t: torch.full_like(t, float("nan"))),
    "opacities int": _set(["splats", "opacities"], lambda t: t.long()),
    "extra splat key": _set(["splats", "colors"], torch.zeros(3)),
    "exp_avg wrong shape": _set(["optimizers", "means", "state", 0, "exp_avg"], lambda t: t[:-1].clone()),
    "exp_avg_sq negative": _set(["optimizers", "scales", "state", 0, "exp_avg_sq"], lambda t: -t - 1),
    "optimizer missing": _drop(["optimizers", "quats"]),
    "optimizer step inf": _set(["optimizers", "sh0", "state", 0, "step"], torch.tensor(float("inf"))),
    "sampler gen too short": _set(["sampler", "gen"], lambda t: t[:100].clone()),
    "sampler perm out of range": _set(["sampler", "perm"], [0, 1, 99]),
    "sampler pos beyond perm": _set(["sampler", "pos"], 10 ** 6),
    "sampler of another scene": _set(["sampler", "n"], 7),
    "torch rng wrong size": _set(["rng", "torch"], lambda t: t[:10].clone()),
    "numpy rng keys float": _set(["rng", "numpy", "keys"], lambda t: t.double()),
    "numpy rng keys short": _set(["rng", "numpy", "keys"], lambda t: t[:5].clone()),
    "python rng short": _set(["rng", "python", "state"], [1, 2, 3]),
    "strategy state keys": _set(["strategy_state"], {"bogus": 1}),
    "strategy grad2d wrong length": _set(["strategy_state", "grad2d"], lambda t: torch.zeros(3)),
    "strategy scene_scale zero": _set(["strategy_state", "scene_scale"], 0.0),
    "other strategy": _set(["config", "strategy"], "mcmc"),
    "config not a dict": _set(["config"], "default"),
    "elapsed NaN": _set(["elapsed"], float("nan")),
}


def _crafted(good_path) -> dict:
    cases = {}
    for name, edit in CRAFTED.items():
        ck = torch.load(good_path, weights_only=True)
        ck.pop("digest")
        if edit is not None:
            out = edit(ck)
            ck = ck if out is None else out
            if isinstance(ck, dict):
                ck["digest"] = ckpt.content_digest(ck)
        buf = io.BytesIO()
        torch.save(ck, buf)
        cases[name] = buf.getvalue()
    return cases


class _Timeout(Exception):
    pass


def _resume_from(path, scene, out):
    """Resuming from `path` must end in a UserError naming it, within CASE_TIMEOUT_S."""
    def on_alarm(*_):
        raise _Timeout(f"{path}: no answer within {CASE_TIMEOUT_S} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(CASE_TIMEOUT_S)
    try:
        with pytest.raises(UserError) as e:
            Trainer(_cfg(out, resume=str(path)), scene=scene)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert str(path) in str(e.value), str(e.value)
    return str(e.value)


def test_the_good_checkpoint_resumes(good, scene, tmp_path):
    tr = Trainer(_cfg(tmp_path / "run", resume=good), scene=scene)
    assert tr.step == 10
    tr.train_steps()
    assert tr.step == 20


def test_damaged_checkpoints_are_refused(good, scene, tmp_path):
    cases = _damaged(open(good, "rb").read())
    assert len(cases) >= 20
    digest_caught = 0
    for i, (name, data) in enumerate(cases.items()):
        path = tmp_path / f"damaged_{i:02d}.pt"
        path.write_bytes(data)
        msg = _resume_from(path, scene, tmp_path / "run")
        digest_caught += "digest" in msg
    assert digest_caught >= 4, "bit flips in tensor bytes are caught by the content digest"
    assert sorted(os.listdir(tmp_path)) == sorted(f"damaged_{i:02d}.pt" for i in range(len(cases)))  # wrote nothing


def test_crafted_checkpoints_are_refused(good, scene, tmp_path):
    cases = _crafted(good)
    assert len(cases) >= 20
    for i, (name, data) in enumerate(cases.items()):
        path = tmp_path / f"crafted_{i:02d}.pt"
        path.write_bytes(data)
        msg = _resume_from(path, scene, tmp_path / "run")
        assert "digest" not in msg or name == "no digest", (name, msg)    # refused for what is wrong in it


# ---- hostile pickles to every verb that reads a checkpoint --------------------------------------------

class _Payload:
    """Unpickling this runs code: it writes the file `ran`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _evil_checkpoint(path, marker):
    good_splats = {"means": torch.zeros(2, 3), "quats": torch.tensor([[1.0, 0, 0, 0]] * 2), "scales": torch.zeros(2, 3),
                   "opacities": torch.zeros(2), "sh0": torch.zeros(2, 1, 3), "shN": torch.zeros(2, 0, 3)}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"step": 100, "splats": good_splats, "x": _Payload(marker)}, path)


def _refused(argv, capsys, marker):
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, (argv, rc, err)
    assert "pickled object (exec)" in err, err
    assert not os.path.exists(marker), f"{argv}: the file's code ran"


@pytest.mark.skipif(not os.path.isdir(STATUE), reason=f"{STATUE} not present")
def test_crafted_pickles_run_nothing(tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    _evil_checkpoint(evil, marker)
    data = ["--data", STATUE, "--data-factor", "8"]
    _refused(["export", str(evil), "--out", str(tmp_path / "x.ply")], capsys, marker)
    _refused(["eval", "--splats", str(evil), *data, "--out", str(tmp_path / "ev")], capsys, marker)
    _refused(["render", "--splats", str(evil), *data, "--out", str(tmp_path / "v.mp4")], capsys, marker)
    _refused(["train", *data, "--out", str(tmp_path / "t"), "--resume", str(evil), "--no-progress"], capsys, marker)
    assert not (tmp_path / "t" / MARKER).exists()           # the refused run left no claim on its folder

    # a checkpoint planted in a run folder: OUT/ckpts/ckpt_*.pt
    out = tmp_path / "run"
    RunFolder.claim(out, "train").finish()
    _evil_checkpoint(str(out / "ckpts" / "ckpt_000100.pt"), marker)
    _refused(["train", *data, "--out", str(out), "--resume", "--no-progress"], capsys, marker)
    _refused(["eval", "--splats", str(out), *data, "--out", str(tmp_path / "ev2")], capsys, marker)
    _refused(["render", "--splats", str(out), *data, "--out", str(tmp_path / "v2.mp4")], capsys, marker)
    _refused(["export", str(out), "--out", str(tmp_path / "y.ply")], capsys, marker)
    assert not (tmp_path / "x.ply").exists() and not (tmp_path / "y.ply").exists() and not (tmp_path / "v.mp4").exists()


def test_train_loads_files_only_through_the_data_only_loader():
    folder = os.path.join(ROOT, "gsplat_kit", "train")
    for root, _, files in os.walk(folder):
        for f in files:
            if f.endswith(".py"):
                text = open(os.path.join(root, f)).read()
                assert "torch.load(" not in text and "import pickle" not in text, f"{f}: use load_torch_data"
