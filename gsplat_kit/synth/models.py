"""CIFAR classifiers (ResNet-20/32 of He et al. 2016; ResNet-18/34 CIFAR variants) and teacher I/O.

Every model takes images in [0,1] and normalises them itself (a `Normalize` first layer), so synthesis,
PNG files and distillation all work in one pixel space.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from gsplat_kit.common.atomic import atomic_path
from gsplat_kit.common.errors import UserError
from gsplat_kit.common.safe_load import load_torch_data

from .data import CIFAR10_MEAN, CIFAR10_STD


class TeacherLoadError(UserError):
    """A teacher weights file that cannot be used; the message names the file."""


class Normalize(nn.Module):
    def __init__(self, mean=CIFAR10_MEAN, std=CIFAR10_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: 3x3 stem, no max-pool; `stages` are the Feature Transfer Pyramid's taps."""

    def __init__(self, widths, depths, num_classes=10):
        super().__init__()
        self.normalize = Normalize()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, cin = [], widths[0]
        for i, (w, d) in enumerate(zip(widths, depths)):
            blocks = []
            for j in range(d):
                blocks.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
            layers.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(layers)
        self.fc = nn.Linear(cin, num_classes)
        self.num_classes = num_classes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x):
        """Returns (stage feature maps, penultimate features, logits)."""
        h = F.relu(self.bn1(self.conv1(self.normalize(x))))
        feats = []
        for s in self.stages:
            h = s(h)
            feats.append(h)
        pen = torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)
        return feats, pen, self.fc(pen)

    def forward(self, x):
        return self.forward_features(x)[2]


ARCHS = {
    "resnet20": ((16, 32, 64), (3, 3, 3)),
    "resnet32": ((16, 32, 64), (5, 5, 5)),
    "resnet18": ((64, 128, 256, 512), (2, 2, 2, 2)),
    "resnet34": ((64, 128, 256, 512), (3, 4, 6, 3)),
}


def build_model(arch: str, num_classes: int = 10) -> CifarResNet:
    if arch not in ARCHS:
        raise UserError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHS)}")
    widths, depths = ARCHS[arch]
    return CifarResNet(widths, depths, num_classes)


def save_teacher(model: CifarResNet, arch: str, path, classes=None, extra=None) -> None:
    """Atomic save of {'arch', 'num_classes', 'classes', 'state_dict', ...}."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"arch": arch, "num_classes": model.num_classes, "image_size": 32, "classes": classes,
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    payload.update(extra or {})
    payload["sha256"] = content_digest(payload)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def content_digest(payload: dict) -> str:
    """sha256 of a teacher file's content (tensors by name, dtype, shape and bytes; the other fields as
    JSON), so that a corrupted download whose damage still unpickles (a flipped weight byte, a changed
    class name) is refused on load instead of being used."""
    h = hashlib.sha256()
    meta = {k: v for k, v in payload.items() if k not in ("state_dict", "sha256")}
    h.update(json.dumps(meta, sort_keys=True, default=repr).encode())
    for k in sorted(payload["state_dict"]):
        t = payload["state_dict"][k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def fit_widths(model: nn.Module, state_dict: dict) -> nn.Module:
    """Resizes `model`'s convolutions, BatchNorms and linear layers to the shapes in `state_dict` (a pruned
    network keeps its architecture's layout but fewer channels); the weights are loaded afterwards."""
    for name, m in list(model.named_modules()):
        w = state_dict.get(f"{name}.weight") if name else None
        if not isinstance(w, torch.Tensor):
            continue
        if isinstance(m, nn.Conv2d) and w.ndim == 4 and w.shape[1] > 0 and w.shape[0] > 0:
            new = nn.Conv2d(w.shape[1], w.shape[0], m.kernel_size, m.stride, m.padding, bias=m.bias is not None)
        elif isinstance(m, nn.BatchNorm2d) and w.ndim == 1 and w.shape[0] > 0:
            new = nn.BatchNorm2d(w.shape[0])
        elif isinstance(m, nn.Linear) and w.ndim == 2 and w.shape[1] > 0:
            new = nn.Linear(w.shape[1], m.out_features, bias=m.bias is not None)
        else:
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, new)
    return model


def load_teacher(path, arch: str | None = None, num_classes: int | None = None, map_location="cpu"):
    """Load a classifier saved by `save_teacher` (or a bare state_dict with `arch` given), in eval mode.

    Returns (model, meta) where meta holds arch, num_classes, image_size and classes."""
    path = Path(path)
    obj = load_torch_data(path, "teacher weights file", map_location=map_location)
    if isinstance(obj, dict) and "state_dict" in obj:
        sd = obj["state_dict"]
        if "sha256" in obj and (not isinstance(sd, dict) or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items())
                or obj["sha256"] != content_digest(obj)):
            raise TeacherLoadError(f"{path}: the content does not match its recorded sha256 (a damaged or "
                                   "altered file); download or save it again")
        arch = arch or obj.get("arch")
        meta = {k: v for k, v in obj.items() if k != "state_dict"}
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd, meta = obj, {}
    else:
        raise TeacherLoadError(f"{path}: not a teacher checkpoint (expected a state_dict or save_teacher's dict)")
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise TeacherLoadError(f"{path}: state_dict must map names to tensors")
    if not isinstance(arch, str) or arch not in ARCHS:
        if arch is None:
            raise TeacherLoadError(f"{path}: a bare state_dict; say which architecture it is (arch=..., --arch)")
        raise TeacherLoadError(f"{path}: unknown architecture {arch!r}; known: {sorted(ARCHS)}")
    if num_classes is None:
        fc = sd.get("fc.weight")
        num_classes = int(fc.shape[0]) if fc is not None and fc.ndim == 2 else meta.get("num_classes", 10)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 1 <= num_classes <= 100_000:
        raise TeacherLoadError(f"{path}: num_classes must be a positive integer, got {num_classes!r}")
    for k in ("classes", "image_size"):
        _check_meta(path, k, meta.get(k), num_classes)
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise TeacherLoadError(f"{path}: weights hold NaN or Inf ({bad[0]}{' and more' if len(bad) > 1 else ''})")
    model = build_model(arch, num_classes)
    if meta.get("pruned"):
        fit_widths(model, sd)
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        first = " ".join(str(e).split())[:300]
        raise TeacherLoadError(f"{path}: weights do not fit {arch} with {num_classes} classes: {first}") from None
    size = meta.get("image_size") or 32
    with torch.no_grad():
        try:
            model.eval()(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
        except RuntimeError as e:
            raise TeacherLoadError(f"{path}: the network's layers do not fit together ({str(e).splitlines()[0][:200]})") from None
    meta.update(arch=arch, num_classes=num_classes)
    meta.setdefault("image_size", 32)
    return model.eval(), meta


def _check_meta(path, key, value, num_classes):
    """The plain-data fields synthesis relies on, checked when the file is read."""
    if value is None:
        return
    if key == "classes":
        if not isinstance(value, (list, tuple)) or len(value) != num_classes or not all(isinstance(c, str) for c in value):
            raise TeacherLoadError(f"{path}: 'classes' must list {num_classes} class names (strings)")
        if len(set(value)) != len(value):
            raise TeacherLoadError(f"{path}: 'classes' holds duplicate names")
    elif key == "image_size":
        if isinstance(value, bool) or not isinstance(value, int) or not 8 <= value <= 4096:
            raise TeacherLoadError(f"{path}: 'image_size' must be an integer in [8, 4096], got {value!r}")
