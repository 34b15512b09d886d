"""The synth verbs as a user (or an attacker) drives them: every numeric option range-checked at parse time
(exit 2, one line naming the option), crafted pickles to every verb that reads a .pt/.ckpt (nothing runs),
and class names that are not folder names (nothing is written outside --out)."""
from __future__ import annotations

import json
import os
import pickle
import zipfile

import pytest
import torch

from gsplat_kit.cli import main
from gsplat_kit.synth.models import build_model, save_teacher
from synth_helpers import teacher_path


def _run(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:        # argparse's own usage errors
        rc = e.code
    return rc, capsys.readouterr().err


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A tiny folder in synthesize's layout (one PNG per class of the committed teacher)."""
    from PIL import Image

    from gsplat_kit.synth.models import load_teacher

    d = tmp_path_factory.mktemp("cli_images")
    for c in load_teacher(teacher_path())[1]["classes"]:
        (d / c).mkdir()
        Image.new("RGB", (32, 32), (40, 80, 120)).save(d / c / "00000_000.png")
    return d


def _base(verb, tmp_path, images):
    t = str(teacher_path())
    out = str(tmp_path / "out")
    return {
        "synthesize": ["synthesize", "--teacher", t, "--num-images", "2", "--batch-size", "2", "--iterations", "1",
                       "--out", out, "--no-progress"],
        "distill": ["distill", "--teacher", t, "--images", str(images), "--epochs", "1", "--no-progress"],
        "prune": ["prune", "--teacher", t, "--images", str(images), "--ratio", "0.5", "--out", out,
                  "--epochs", "1", "--no-progress"],
        "train-teacher": ["train-teacher", "--epochs", "1", "--out", str(tmp_path / "t.pt")],
    }[verb]


# verb, option, bad values (each must be refused before any work, naming the option)
TABLE = [
    ("synthesize", "--num-images", ["0", "-3"]),
    ("synthesize", "--batch-size", ["0", "-1"]),
    ("synthesize", "--iterations", ["0", "-5"]),
    ("synthesize", "--seed", ["-1"]),
    ("synthesize", "--threads", ["-2"]),
    ("synthesize", "--opt", ["bn_weight=-1", "lr=0", "g_lr=-0.1", "jitter=-1", "image_size=4",
                             "competition_temperature=0", "lr=nan"]),
    ("distill", "--epochs", ["0", "-1"]),
    ("distill", "--batch-size", ["0"]),
    ("distill", "--lr", ["0", "-0.1", "nan", "inf"]),
    ("distill", "--temperature", ["0", "-4", "nan"]),
    ("distill", "--seed", ["-1"]),
    ("distill", "--threads", ["-1"]),
    ("distill", "--test-limit", ["0"]),
    ("prune", "--ratio", ["0", "1", "-0.5", "1.5", "nan"]),
    ("prune", "--epochs", ["0"]),
    ("prune", "--batch-size", ["0"]),
    ("prune", "--lr", ["0", "-1"]),
    ("prune", "--temperature", ["0"]),
    ("prune", "--real", ["-1"]),
    ("prune", "--test-limit", ["0"]),
    ("prune", "--threads", ["-1"]),
    ("train-teacher", "--epochs", ["0", "-1"]),
    ("train-teacher", "--batch-size", ["0"]),
    ("train-teacher", "--lr", ["0"]),
    ("train-teacher", "--weight-decay", ["-0.1"]),
    ("train-teacher", "--threads", ["-1"]),
    ("train-teacher", "--train-limit", ["0"]),
    ("train-teacher", "--seed", ["-1"]),
]


@pytest.mark.parametrize("verb,option,values", TABLE, ids=[f"{v}{o}" for v, o, _ in TABLE])
def test_numeric_options_out_of_range(verb, option, values, tmp_path, images, capsys):
    for value in values:
        argv = _base(verb, tmp_path, images)
        if option in argv:
            i = argv.index(option)
            argv = argv[:i] + argv[i + 2:]
        rc, err = _run(argv + [option, value], capsys)
        assert rc == 2, (option, value, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), err
        name = value.split("=")[0] if option == "--opt" else option
        assert name in lines[0], (name, lines[0])
        assert not (tmp_path / "out").exists(), "an output folder was claimed before the options were checked"
        assert not (tmp_path / "t.pt").exists()


# -- crafted pickles -----------------------------------------------------------------------------------
class _Touch:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_torch_file(path, marker, template):
    """A real torch zip whose data.pkl calls os.system when unpickled without weights_only."""
    with zipfile.ZipFile(template) as z:
        members = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for n, b in members.items():
            z.writestr(n, pickle.dumps(_Touch(marker), protocol=2) if n.endswith("data.pkl") else b)
    return path


@pytest.mark.parametrize("verb", ["synthesize", "distill", "prune", "train-teacher"])
def test_crafted_pickles_run_nothing(verb, tmp_path, images, capsys):
    marker = tmp_path / "pwned"
    template = tmp_path / "template.pt"
    save_teacher(build_model("resnet20"), "resnet20", template)
    evil = _evil_torch_file(tmp_path / "evil.pt", marker, template)
    argv = _base(verb, tmp_path, images)
    if verb == "train-teacher":      # its own resume checkpoint, planted beside --out
        argv += ["--train-limit", "200", "--batch-size", "100", "--threads", "1"]
        os.replace(evil, tmp_path / "t.pt.ckpt")
        evil = tmp_path / "t.pt.ckpt"
    else:
        argv[argv.index("--teacher") + 1] = str(evil)
    rc, err = _run(argv, capsys)
    assert rc == 2 and evil.name in err and len(err.strip().splitlines()) == 1, err
    assert not marker.exists(), "a crafted pickle ran"
    assert not (tmp_path / "out").exists()


# -- class names that are not folder names --------------------------------------------------------------
def test_hostile_class_names_stay_inside_out(tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    names = ["", "../../x", str(tmp_path / "abs_x"), ".", "..", "a/b", "ok", "../outside", "x" * 300, "batches "]
    t = tmp_path / "hostile.pt"
    save_teacher(build_model("resnet20"), "resnet20", t, names)
    out = tmp_path / "run" / "out"
    rc, err = _run(["synthesize", "--teacher", str(t), "--method", "deep", "--num-images", "10", "--batch-size",
                    "10", "--iterations", "1", "--threads", "1", "--out", str(out), "--no-progress"], capsys)
    assert rc == 0, err
    settings = json.loads((out / "settings.json").read_text())
    mapping = settings["class_folders"]
    assert list(mapping) == names and len(set(mapping.values())) == 10
    pngs = sorted(out.rglob("*.png"))
    assert len(pngs) == 10
    for p in pngs:
        assert p.resolve().parent.parent == out.resolve(), p
        assert p.parent.name in mapping.values()
    assert mapping["ok"] == "ok"
    # nothing anywhere else: not beside --out, not at the absolute name, not in the planted folder
    assert sorted(x.name for x in (tmp_path / "run").iterdir()) == ["out"]
    assert not (tmp_path / "abs_x").exists() and not any(outside.iterdir())
    assert sorted(x.name for x in tmp_path.iterdir()) == ["hostile.pt", "outside", "run"]
    # distill reads the set back under the same mapping
    from gsplat_kit.synth.distill import load_synthetic

    xs, ys, classes = load_synthetic(out, 10, 32, names)
    assert len(xs) == 10 and sorted(ys.tolist()) == list(range(10)) and classes == names


def test_no_unsafe_loading_in_synth():
    """Every torch file the synth package reads goes through common.safe_load (weights_only=True)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for p in list((root / "gsplat_kit" / "synth").glob("*.py")) + [root / "scripts" / "bench_synth.py"]:
        src = p.read_text()
        assert not re.search(r"weights_only\s*=\s*False", src), p
        assert not re.search(r"\btorch\.load\(", src), p
        assert not re.search(r"\bpickle\.loads?\(", src), p
