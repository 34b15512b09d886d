#!/usr/bin/env python
"""Train a CIFAR-10 teacher: a thin wrapper over `gsplat-kit train-teacher` (same flags).

CPU (the committed teacher):
    nice -n 10 python scripts/train_teacher.py --arch resnet20 --epochs 5 --lr 0.15 --threads 2 \
        --out data/teachers/resnet20_cifar10.pt
GPU (the papers' ResNet-34 teacher / ResNet-18 student):
    python scripts/train_teacher.py --arch resnet34 --epochs 200 --device cuda --out resnet34_cifar10.pt
"""
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gsplat_kit.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train-teacher", *sys.argv[1:]]))
