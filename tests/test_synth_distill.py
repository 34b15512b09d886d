"""KD evaluation: the metrics on known inputs, the folder reader's checks, a short distillation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gsplat_kit.synth import distill as D
from synth_helpers import load_committed_teacher, need_cifar10


def test_kd_loss_and_scores_on_known_inputs():
    logits = torch.randn(8, 10)
    assert D.kd_loss(logits, logits, 4.0).abs() < 1e-6
    assert D.kd_loss(logits, logits.flip(0), 4.0) > 0.01
    confident = torch.eye(10).repeat(3, 1) * 50       # sure and spread over all classes -> ~C
    assert D.inception_score(confident) == pytest.approx(10, rel=1e-3)
    assert D.inception_score(torch.zeros(30, 10)) == pytest.approx(1, rel=1e-6)   # no information
    f = torch.randn(200, 16)
    y = torch.arange(200) % 4
    assert D.class_feature_distance(f, y, f, y, 4) == pytest.approx(0, abs=1e-9)
    assert D.class_feature_distance(f, y, f + 1, y, 4) == pytest.approx(16, rel=1e-6)


def _write_pngs(folder, x, y, classes):
    from PIL import Image

    for i, (img, c) in enumerate(zip(x, y)):
        (folder / classes[c]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / classes[c] / f"{i:05d}.png")


@pytest.fixture(scope="module")
def real_folder(tmp_path_factory):
    need_cifar10()
    from gsplat_kit.synth.data import load_cifar10, subset_per_class

    x, y, classes = load_cifar10("train")
    x, y = subset_per_class(x, y, 20, seed=5)
    folder = tmp_path_factory.mktemp("real_pngs")
    _write_pngs(folder, x, y, classes)
    return folder


def test_distill_reads_class_folders_and_trains_a_student(real_folder, tmp_path):
    teacher = load_committed_teacher()
    res = D.distill(real_folder, teacher, "resnet20", epochs=3, batch_size=50, test_limit=500, progress=False,
                    metrics_real_per_class=30, out=tmp_path / "student.pt")
    assert res["num_images"] == 200 and res["test_images"] == 500
    # real images under their class folders: the teacher must recognise them (labels read right);
    # a scrambled folder -> label mapping would give ~0.1
    assert res["teacher_acc_on_synthetic"] > 0.5
    assert res["teacher_test_accuracy"] > 0.5
    assert res["kd_loss_last"] < res["kd_loss_first"]
    assert 0 <= res["student_test_accuracy"] <= 1
    # measured 5.7 (teacher on real images, 6.0 on the 300 metric images); noise or one class gives ~1-2
    assert res["inception_score_teacher"] > 3.5
    assert res["class_feature_distance"] < 5     # measured 1.07 (real vs real); synthetic sets: see BENCHMARKS
    assert (tmp_path / "student.pt").is_file()


def test_distill_bad_folders(tmp_path, real_folder):
    teacher = load_committed_teacher()
    with pytest.raises(FileNotFoundError, match="nowhere"):
        D.distill(tmp_path / "nowhere", teacher, epochs=1, progress=False)
    (tmp_path / "zebra").mkdir()
    with pytest.raises(ValueError, match="zebra"):
        D.distill(tmp_path, teacher, epochs=1, progress=False)
    from PIL import Image

    big = tmp_path / "big"
    (big / "cat").mkdir(parents=True)
    Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(big / "cat" / "a.png")
    with pytest.raises(ValueError, match="48x48"):
        D.distill(big, teacher, epochs=1, progress=False)
    bad = tmp_path / "bad"
    (bad / "dog").mkdir(parents=True)
    (bad / "dog" / "x.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="x.png"):
        D.distill(bad, teacher, epochs=1, progress=False)
    with pytest.raises(ValueError, match="unknown architecture"):
        D.distill(real_folder, teacher, student_arch="vgg99", epochs=1, progress=False)
