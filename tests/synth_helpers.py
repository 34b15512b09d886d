"""Shared by tests/test_synth_*.py: the teacher to invert, small real-data subsets."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMITTED_TEACHER = ROOT / "data" / "teachers" / "resnet20_cifar10.pt"
# before the committed teacher existed, development used a briefly trained one here
DEV_TEACHER = Path(os.environ.get("GSPLAT_KIT_DEV_TEACHER", "/tmp/synth_dev_teacher.pt"))
CIFAR10 = ROOT.parent / "shared" / "data" / "cifar10"


def teacher_path() -> Path:
    for p in (COMMITTED_TEACHER, DEV_TEACHER):
        if p.is_file():
            return p
    pytest.skip("no CIFAR-10 teacher: run scripts/train_teacher.py (data/teachers/resnet20_cifar10.pt)")


def load_committed_teacher():
    from gsplat_kit.synth.models import load_teacher

    return load_teacher(teacher_path())


def need_cifar10():
    if not (CIFAR10 / "test").is_dir():
        pytest.skip(f"CIFAR-10 not found at {CIFAR10}")
