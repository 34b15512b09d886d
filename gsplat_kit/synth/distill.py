"""Judge a synthetic image set: knowledge distillation of a fresh student on it (Hinton et al. 2015),
student accuracy on the real CIFAR-10 test set, and distribution checks in the teacher's own eyes.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gsplat_kit.common.errors import UserError
from gsplat_kit.common.paths import safe_name

from .data import load_cifar10, list_classes, subset_per_class, to_tensor
from .models import build_model, load_teacher
from .teacher import augment, evaluate, one_cycle


def load_synthetic(images_dir, num_classes: int, image_size: int = 32, classes=None):
    """Images of `images_dir/<class>/*.png` as uint8 [N,H,W,3] with labels from the folder names.

    The class folders must match the teacher's classes (by name when it lists them, else by count); a
    class name that is not a safe folder name is looked up under synthesize's mapping of it (`safe_name`)."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(2, "image folder not found", str(images_dir))
    found = list_classes(images_dir)
    found = [c for c in found if not c.startswith(".") and c != "batches"]
    if classes:
        folders = [safe_name(c) for c in classes]
        extra = sorted(set(found) - set(folders))
        if extra:
            raise UserError(f"{images_dir}: class folders {extra} are not among the teacher's classes {list(classes)}")
    elif len(found) != num_classes:
        raise UserError(f"{images_dir}: {len(found)} class folders for a teacher with {num_classes} classes")
    names = folders if classes else found
    xs, ys = [], []
    for ci, c in enumerate(names):
        if not (images_dir / c).is_dir():
            continue
        x = _load_one_class(images_dir / c, image_size)
        xs.append(x)
        ys.append(np.full(len(x), ci, dtype=np.int64))
    if not xs or not sum(len(x) for x in xs):
        raise UserError(f"{images_dir}: no images in class folders")
    return np.concatenate(xs), np.concatenate(ys), list(classes) if classes else names


def _load_one_class(folder: Path, image_size: int):
    from PIL import Image

    xs = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            continue
        try:
            img = Image.open(p).convert("RGB")
        except OSError as e:
            raise UserError(f"{p}: unreadable image ({e})") from None
        if img.size != (image_size, image_size):
            raise UserError(f"{p}: image is {img.size[0]}x{img.size[1]}, the teacher takes {image_size}x{image_size}")
        xs.append(np.asarray(img, dtype=np.uint8))
    return np.stack(xs) if xs else np.zeros((0, image_size, image_size, 3), np.uint8)


def kd_loss(student_logits, teacher_logits, temperature: float) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) * T^2, batch mean."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                    reduction="batchmean", log_target=True) * t * t


def kd_train(student, teacher, x: torch.Tensor, epochs: int = 100, batch_size: int = 128, lr: float = 0.1,
             weight_decay: float = 5e-4, temperature: float = 4.0, seed: int = 0, device="cpu",
             progress: bool = False, min_steps: int = 0):
    """Train `student` to match `teacher`'s softened outputs on images x ([0,1], augmented by crop+flip).

    SGD + Nesterov momentum with a one-cycle schedule. Returns the per-epoch mean losses."""
    gen = torch.Generator().manual_seed(seed)
    student.to(device).train()
    teacher.to(device).eval()
    bs = min(batch_size, len(x))
    spe = max(1, len(x) // bs)
    epochs = max(epochs, math.ceil(min_steps / spe)) if min_steps else epochs
    opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    sched = one_cycle(opt, lr, epochs * spe, min(0.5, max(0.2, 2.0 / (epochs * spe))))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs * spe, unit="step", desc="distill")
    losses = []
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        tot = 0.0
        for it in range(spe):
            xb = augment(x[perm[it * bs:(it + 1) * bs]], gen).to(device)
            with torch.no_grad():
                tl = teacher(xb)
            loss = kd_loss(student(xb), tl, temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item()
            if bar is not None:
                bar.update(1)
        losses.append(tot / spe)
    if bar is not None:
        bar.close()
    return losses


@torch.no_grad()
def penultimate(model, x: torch.Tensor, batch_size: int = 500):
    """(penultimate features, logits) of [0,1] images."""
    fs, ls = [], []
    for i in range(0, len(x), batch_size):
        _, f, lo = model.forward_features(x[i:i + batch_size])
        fs.append(f)
        ls.append(lo)
    return torch.cat(fs), torch.cat(ls)


def inception_score(logits: torch.Tensor) -> float:
    """exp(E_x KL(p(y|x) || p(y))) with the teacher as the classifier (1 .. num_classes)."""
    logp = F.log_softmax(logits.double(), 1)
    p = logp.exp()
    logpy = torch.log(p.mean(0).clamp_min(1e-30))
    return float(torch.exp((p * (logp - logpy)).sum(1).mean()))


def class_feature_distance(f_a, y_a, f_b, y_b, num_classes: int) -> float:
    """Mean over classes of the Fréchet distance between diagonal Gaussians fitted to the teacher's
    penultimate features of set a and set b: ||mu_a - mu_b||^2 + sum(var_a + var_b - 2 sqrt(var_a var_b))."""
    ds = []
    for c in range(num_classes):
        a, b = f_a[y_a == c].double(), f_b[y_b == c].double()
        if len(a) < 2 or len(b) < 2:
            continue
        va, vb = a.var(0), b.var(0)
        ds.append(float(((a.mean(0) - b.mean(0)) ** 2).sum() + (va + vb - 2 * (va * vb).sqrt()).sum()))
    if not ds:
        raise ValueError("no class has two or more images in both sets")
    return float(np.mean(ds))


def synthetic_metrics(teacher, x_syn, y_syn, x_real, y_real, num_classes: int) -> dict:
    """Teacher-side checks of a synthetic set against real images (both [0,1] float tensors)."""
    teacher.eval()
    fs, ls = penultimate(teacher, x_syn)
    fr, lr_ = penultimate(teacher, x_real)
    return {
        "teacher_acc_on_synthetic": float((ls.argmax(1) == y_syn).float().mean()),
        "inception_score_teacher": inception_score(ls),
        "inception_score_teacher_real": inception_score(lr_),
        "class_feature_distance": class_feature_distance(fs, y_syn, fr, y_real, num_classes),
        # real vs real (train vs test) is the floor a perfect synthesiser would reach at this sample size
        "real_images_for_metrics": len(x_real),
    }


def distill(images_dir, teacher, student_arch: str = "resnet20", epochs: int = 100, batch_size: int = 128,
            lr: float = 0.1, temperature: float = 4.0, seed: int = 0, device: str = "cpu", progress: bool = True,
            test_limit: int | None = None, metrics_real_per_class: int = 200, out: str | None = None,
            min_steps: int = 0) -> dict:
    """KD of a fresh `student_arch` on the images of `images_dir` only; accuracy on the real test set.

    teacher: checkpoint path or (model, meta). test_limit: evaluate on this many test images (balanced).
    Returns test accuracies (student, teacher), the synthetic-set metrics and timings; saves the student
    (save_teacher format) to `out` when given."""
    if isinstance(teacher, (str, os.PathLike)):
        model, meta = load_teacher(teacher)
    else:
        model, meta = teacher
    model = model.to(device).eval()
    nc = int(meta.get("num_classes") or model.num_classes)
    xs, ys, names = load_synthetic(images_dir, nc, int(meta.get("image_size", 32)), meta.get("classes"))
    x_syn, y_syn = to_tensor(xs), torch.from_numpy(ys)
    torch.manual_seed(seed)
    student = build_model(student_arch, nc)
    return _distill_and_score(model, student, x_syn, y_syn, nc, epochs, batch_size, lr, temperature, seed,
                              device, progress, test_limit, metrics_real_per_class, out, student_arch,
                              {"images": str(images_dir)}, min_steps)


def distill_real(num_images: int, teacher, student_arch: str = "resnet20", seed: int = 0, **kw) -> dict:
    """The upper reference: the same KD on `num_images` real CIFAR-10 training images (balanced)."""
    model, meta = load_teacher(teacher) if isinstance(teacher, (str, os.PathLike)) else teacher
    xtr, ytr, _ = load_cifar10("train")
    nc = int(meta.get("num_classes") or model.num_classes)
    xr, yr = subset_per_class(xtr, ytr, max(1, num_images // nc), seed=seed + 1)
    torch.manual_seed(seed)
    student = build_model(student_arch, nc)
    device = kw.pop("device", "cpu")
    return _distill_and_score(model.to(device).eval(), student, to_tensor(xr), torch.from_numpy(yr), nc,
                              kw.pop("epochs", 100), kw.pop("batch_size", 128), kw.pop("lr", 0.1),
                              kw.pop("temperature", 4.0), seed, device, kw.pop("progress", True),
                              kw.pop("test_limit", None), kw.pop("metrics_real_per_class", 200), kw.pop("out", None),
                              student_arch, {"images": f"{len(xr)} real CIFAR-10 training images"},
                              kw.pop("min_steps", 0))


def _distill_and_score(model, student, x_syn, y_syn, nc, epochs, batch_size, lr, temperature, seed, device,
                       progress, test_limit, metrics_real_per_class, out, student_arch, extra, min_steps):
    xte, yte, _ = load_cifar10("test")
    if test_limit:
        xte, yte = subset_per_class(xte, yte, max(1, test_limit // nc), seed=seed)
    xte, yte = to_tensor(xte).to(device), torch.from_numpy(yte).to(device)
    xtr, ytr, _ = load_cifar10("train")
    xr, yr = subset_per_class(xtr, ytr, metrics_real_per_class, seed=seed + 2)
    t0 = time.time()
    losses = kd_train(student, model, x_syn, epochs, batch_size, lr, temperature=temperature, seed=seed,
                      device=device, progress=progress, min_steps=min_steps)
    kd_seconds = time.time() - t0
    res = dict(extra)
    res.update({
        "student": student_arch, "num_images": len(x_syn), "epochs": len(losses), "temperature": temperature,
        "student_test_accuracy": evaluate(student.eval(), xte, yte),
        "teacher_test_accuracy": evaluate(model, xte, yte),
        "test_images": len(xte), "kd_loss_first": losses[0], "kd_loss_last": losses[-1],
        "kd_seconds": round(kd_seconds, 1),
    })
    res.update(synthetic_metrics(model, x_syn.to(device), y_syn.to(device), to_tensor(xr).to(device),
                                 torch.from_numpy(yr).to(device), nc))
    if out:
        from .models import save_teacher

        save_teacher(student.cpu(), student_arch, out, extra={"test_accuracy": res["student_test_accuracy"]})
    return res
