"""Teacher training: a tiny run writes loadable weights + the JSON record; bad arguments are refused."""
from __future__ import annotations

import json

import pytest
import torch

from gsplat_kit.synth.models import ARCHS, build_model, load_teacher
from gsplat_kit.synth.teacher import augment, train_classifier
from synth_helpers import COMMITTED_TEACHER, need_cifar10


def test_tiny_training_run_saves_a_loadable_teacher(tmp_path):
    need_cifar10()
    out = tmp_path / "t.pt"
    res = train_classifier("resnet20", epochs=1, batch_size=64, train_limit=256, test_limit=200, out=out,
                           threads=None, log=lambda *a: None, command="test")
    assert out.is_file() and not (tmp_path / "t.pt.ckpt").exists()
    rec = json.loads(out.with_suffix(".json").read_text())
    assert rec["command"] == "test" and rec["epochs"] == 1 and rec["test_images"] == 200
    model, meta = load_teacher(out)
    assert meta["arch"] == "resnet20" and len(meta["classes"]) == 10 and meta["classes"][0] == "airplane"
    assert 0 <= rec["test_accuracy"] <= 1


def test_committed_teacher_record():
    if not COMMITTED_TEACHER.is_file():
        pytest.skip("no committed teacher")
    rec = json.loads(COMMITTED_TEACHER.with_suffix(".json").read_text())
    assert rec["arch"] == "resnet20" and rec["test_images"] == 10000 and rec["test_accuracy"] > 0.75
    model, meta = load_teacher(COMMITTED_TEACHER)
    assert sum(p.numel() for p in model.parameters()) == rec["params"]


def test_architectures_and_augment():
    x = torch.rand(2, 3, 32, 32)
    for arch in ARCHS:
        feats, pen, logits = build_model(arch, 7).forward_features(x)
        assert logits.shape == (2, 7) and [f.shape[-1] for f in feats][0] == 32
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("resnet9000")
    g = torch.Generator().manual_seed(0)
    y = augment(x, g)
    assert y.shape == x.shape
    # crop + flip only move pixels: each output row is a shifted (maybe mirrored) source row or padding
    assert set(torch.unique(torch.cat([x.flatten(), torch.zeros(1)])).tolist()) >= set(torch.unique(y).tolist())
