#!/usr/bin/env python
"""Photometric loss benchmark: 0.8 L1 + 0.2 (1 - SSIM), forward + backward, with the native CPU SSIM
(csrc/loss/ssim_cpu.cpp) against the torch ops of gsplat_kit.train.losses, in one run.

    python scripts/bench_loss.py [--sizes 200x150 800x600] [--threads 1] [--repeats 10]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def loss_ms(impl: str, h: int, w: int, repeats: int) -> tuple[float, float]:
    """Median forward and backward milliseconds of the loss on one [1, h, w, 3] render."""
    from gsplat_kit.train.losses import ssim

    g = torch.Generator().manual_seed(0)
    target = torch.rand(1, h, w, 3, generator=g)
    render = (target + 0.1 * torch.randn(target.shape, generator=g)).clamp(0, 1).requires_grad_()

    def loss():
        r, t = render.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2)
        return 0.8 * (r - t).abs().mean() + 0.2 * (1 - ssim(r, t, impl=impl))

    fwd, bwd = [], []
    for i in range(repeats + 1):  # the first call warms up
        t0 = time.perf_counter()
        value = loss()
        t1 = time.perf_counter()
        value.backward()
        t2 = time.perf_counter()
        render.grad = None
        if i:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    return statistics.median(fwd) * 1e3, statistics.median(bwd) * 1e3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["200x150", "800x600"], help="WIDTHxHEIGHT")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (training picks 1 on a busy machine)")
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    print(f"{'size':>9} {'native fwd':>11} {'native bwd':>11} {'torch fwd':>10} {'torch bwd':>10} {'speedup':>8}")
    for size in args.sizes:
        w, h = (int(v) for v in size.split("x"))
        nf, nb = loss_ms("native", h, w, args.repeats)
        tf, tb = loss_ms("torch", h, w, args.repeats)
        print(f"{size:>9} {nf:>9.1f}ms {nb:>9.1f}ms {tf:>8.1f}ms {tb:>8.1f}ms {(tf + tb) / (nf + nb):>7.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
