#!/usr/bin/env python
"""Rasteriser benchmark: forward + backward of gsplat_kit's kernels, against its own pure-PyTorch
reference and against gsplat 1.5.3, in one run.

    python scripts/bench_raster.py                    # CPU kernels (this machine)
    python scripts/bench_raster.py --device cuda      # CUDA kernels vs gsplat's CUDA rasterization
    python scripts/bench_raster.py --kernels-only     # the kernels' forward + backward only

Scenes are sampled like a real capture: 100k Gaussians drawn around the SfM points of
../shared/data/cup_kwrous (position jitter and scale from the 3-nearest-neighbour distance, colour
from the point), SH degree 3, seen from that capture's own COLMAP cameras.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "cup_kwrous")


# ---- scene ------------------------------------------------------------------------------------------

def capture_like_scene(data: str, n: int, width: int, height: int, seed: int = 0, n_cams: int = 1):
    """n Gaussians sampled around the capture's SfM points; its first cameras rescaled to width x height."""
    from scipy.spatial import cKDTree

    from gsplat_kit.scene import load_scene

    scene = load_scene(data, data_factor=1, test_every=0)
    pts = scene.points.numpy().astype(np.float64)
    rgb = scene.points_rgb.numpy()
    dist, _ = cKDTree(pts).query(pts, k=4)
    nn = dist[:, 1:].mean(1)
    g = np.random.default_rng(seed)
    idx = g.integers(0, len(pts), n)
    means = pts[idx] + g.normal(size=(n, 3)) * nn[idx, None] * 0.5
    scales = np.clip(nn[idx, None] * g.uniform(0.2, 0.6, size=(n, 3)), 1e-4, None)
    sh = np.zeros((n, 16, 3))
    sh[:, 0] = (rgb[idx] - 0.5) / 0.28209479177387814
    sh[:, 1:] = g.normal(size=(n, 15, 3)) * 0.05
    views = scene.train_views[:n_cams]
    Ks = torch.stack([v.K for v in views]).double()
    Ks[:, 0] *= width / views[0].width
    Ks[:, 1] *= height / views[0].height
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)
    return dict(
        means=t(means), quats=t(g.normal(size=(n, 4))), scales=t(scales), opacities=t(g.uniform(0.1, 0.9, n)),
        colors=t(sh), viewmats=torch.stack([v.viewmat for v in views]).float(), Ks=Ks.float(), width=width,
        height=height,
    )


def to(scene, device):
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in scene.items()}


# ---- timing -----------------------------------------------------------------------------------------

def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


# Wall time; --cpu-time switches to the process's CPU time (a before/after comparison on a loaded machine).
CLOCK = time.perf_counter


def time_fwd_bwd(fn, scene, device, repeats=3, warmup=True, **kw):
    """Median seconds of forward, and of forward + backward, and the last meta."""
    leaves = {k: scene[k].detach().clone().requires_grad_() for k in ("means", "quats", "scales", "opacities", "colors")}
    fwd, both, meta = [], [], None
    for _ in range(repeats + int(warmup)):  # the first run warms up
        sync(device)
        t0 = CLOCK()
        c, a, meta = fn(**{**scene, **leaves}, **kw)
        sync(device)
        t1 = CLOCK()
        (c.sum() + a.sum()).backward()
        sync(device)
        t2 = CLOCK()
        fwd.append(t1 - t0)
        both.append(t2 - t0)
    skip = int(warmup)
    return float(np.median(fwd[skip:])), float(np.median(both[skip:])), meta


def simd_peak_gflops():
    """fp32 peak of this CPU: cores x clock x SIMD lanes x 2 FMA units x 2 flops."""
    info = open("/proc/cpuinfo").read()
    mhz = float(re.search(r"cpu MHz\s*:\s*([\d.]+)", info).group(1))
    flags = re.search(r"flags\s*:(.*)", info).group(1).split()
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    cores = os.cpu_count()
    return cores * mhz * 1e-3 * lanes * 2 * 2, cores, mhz, lanes


# The reference keeps every per-Gaussian [H*W] intermediate for autograd (~40 bytes per pixel per
# Gaussian), so it is compared at a size its memory allows.
REF_GAUSSIANS, REF_SIZE = 2000, (200, 150)

# Approximate fp32 operations per Gaussian-pixel evaluation (sigma, exp, alpha, compositing 3
# channels: ~35 forward; the backward re-evaluates alpha and adds ~60 for its gradients).
FLOPS_FWD, FLOPS_BWD = 35, 95


def bench_kernels(args, out):
    from gsplat_kit import rasterization

    peak, cores, mhz, lanes = simd_peak_gflops()
    out["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": cores, "mhz": mhz, "simd_lanes_fp32": lanes,
                      "fp32_peak_gflops": peak}
    for (w, h) in args.sizes:
        scene = to(capture_like_scene(args.data, args.num_gaussians, w, h), args.device)
        t_fwd, t_both, meta = time_fwd_bwd(rasterization, scene, args.device, repeats=args.repeats, sh_degree=3)
        n_isect = int(meta["flatten_ids"].numel())
        # Evaluations a tile rasteriser is asked for: every (Gaussian, pixel) pair of every tile it is binned to.
        evals = n_isect * 16 * 16
        t_bwd = t_both - t_fwd
        rate = evals / t_both
        row = {"size": f"{w}x{h}", "gaussians": args.num_gaussians, "intersections": n_isect, "fwd_s": t_fwd,
               "bwd_s": t_bwd, "fwd_bwd_s": t_both, "blend_evals_per_s": rate}
        if args.device == "cpu":
            row["share_of_fp32_simd_peak"] = (evals * (FLOPS_FWD / t_fwd + FLOPS_BWD / max(t_bwd, 1e-9)) / 2) / (peak * 1e9)
        out.setdefault("kernels", []).append(row)
        print(f"[kernels/{args.device}] {w}x{h} {args.num_gaussians} Gaussians SH3: fwd {t_fwd * 1e3:.1f} ms, "
              f"bwd {t_bwd * 1e3:.1f} ms, fwd+bwd {t_both * 1e3:.1f} ms; {n_isect} tile intersections, "
              f"{rate / 1e9:.2f} G blend evals/s" +
              (f", {100 * row['share_of_fp32_simd_peak']:.1f}% of fp32 SIMD peak ({peak:.0f} GFLOP/s)" if args.device == "cpu" else ""))


def child_peak_rss(which: str, args) -> tuple[float, float]:
    """Runs one implementation in a fresh process; returns (seconds fwd+bwd, peak RSS above the baseline, MB)."""
    cmd = [sys.executable, __file__, "--child", which, "--data", args.data, "--repeats", str(args.repeats)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    r = json.loads(res.stdout.strip().splitlines()[-1])
    return r["seconds"], r["peak_mb"]


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_child(which: str, args):
    from gsplat_kit import rasterization
    from gsplat_kit.render.reference import rasterization_reference

    scene = capture_like_scene(args.data, REF_GAUSSIANS, *REF_SIZE)
    with open("/proc/self/clear_refs", "w") as f:  # resets the peak (VmHWM) to the current RSS
        f.write("5")
    base = _rss_mb("VmRSS")
    fn = rasterization if which == "native" else rasterization_reference
    ref = which == "reference"
    _, t_both, _ = time_fwd_bwd(fn, scene, "cpu", repeats=1 if ref else args.repeats, warmup=not ref, sh_degree=3)
    peak = _rss_mb("VmHWM") - base
    print(json.dumps({"seconds": t_both, "peak_mb": peak}))


def bench_reference(args, out):
    t_ref, m_ref = child_peak_rss("reference", args)
    t_nat, m_nat = child_peak_rss("native", args)
    out["reference"] = {"gaussians": REF_GAUSSIANS, "size": "%dx%d" % REF_SIZE, "reference_s": t_ref, "kernels_s": t_nat,
                        "speedup": t_ref / t_nat, "reference_peak_mb": m_ref, "kernels_peak_mb": m_nat}
    print(f"[reference] {REF_GAUSSIANS} Gaussians {REF_SIZE[0]}x{REF_SIZE[1]} SH3 fwd+bwd: reference {t_ref:.2f} s, kernels {t_nat * 1e3:.1f} ms "
          f"-> {t_ref / t_nat:.0f}x faster; peak memory above baseline: reference {m_ref:.0f} MB, kernels {m_nat:.0f} MB")


def bench_gsplat_torch(args, out):
    """gsplat 1.5.3's pure-PyTorch projection and SH (its rasterisation needs CUDA) vs ours, on the CPU."""
    try:
        from gsplat.cuda._torch_impl import _fully_fused_projection, _spherical_harmonics
    except ImportError as e:
        print(f"[gsplat] gsplat 1.5.3 is not installed ({e}): pip install -r requirements-bench.txt")
        return
    from gsplat_kit import _backend
    from gsplat_kit.render._wrapper import _Projection, _SphericalHarmonics
    from gsplat_kit.render.reference import covariance_3d

    s = capture_like_scene(args.data, args.num_gaussians, 800, 600)
    C, N = s["viewmats"].shape[0], s["means"].shape[0]
    covars = covariance_3d(s["quats"], s["scales"])

    def ours_proj():
        return _Projection.apply(s["means"], s["quats"].contiguous(), s["scales"].contiguous(), None, s["viewmats"],
                                 s["Ks"], 800, 600, 0.3, 0.01, 1e10, 0.0)

    def theirs_proj():
        return _fully_fused_projection(s["means"], covars, s["viewmats"], s["Ks"], 800, 600, eps2d=0.3)

    campos = torch.linalg.inv(s["viewmats"])[:, :3, 3]
    dirs = (s["means"][None] - campos[:, None]).reshape(-1, 3).contiguous()
    coeffs = s["colors"].contiguous()

    def ours_sh():
        return _SphericalHarmonics.apply(3, dirs, coeffs)

    def theirs_sh():
        return _spherical_harmonics(3, dirs, coeffs.expand(C, N, 16, 3).reshape(-1, 16, 3))

    def timed(f, reps=5):
        f()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            r = f()
            ts.append(time.perf_counter() - t0)
        return float(np.median(ts)), r

    t_op, (radii, means2d, depths, conics, _) = timed(ours_proj)
    t_tp, (g_radii, g_means2d, g_depths, g_conics, _) = timed(theirs_proj)
    both = (radii > 0).all(-1) & (g_radii > 0).all(-1)
    proj_diff = max((means2d - g_means2d)[both].abs().max().item(), (depths - g_depths)[both].abs().max().item(),
                    ((conics - g_conics)[both].abs() / g_conics[both].abs().clamp_min(1e-3)).max().item())
    t_os, c_ours = timed(ours_sh)
    t_ts, c_theirs = timed(theirs_sh)
    sh_diff = (c_ours - c_theirs).abs().max().item()
    out["gsplat_torch"] = {"projection_ours_ms": t_op * 1e3, "projection_gsplat_ms": t_tp * 1e3,
                           "projection_max_diff": proj_diff, "visible_both": int(both.sum()),
                           "sh_ours_ms": t_os * 1e3, "sh_gsplat_ms": t_ts * 1e3, "sh_max_abs_diff": sh_diff}
    print(f"[gsplat 1.5.3 torch, CPU] projection of {N} Gaussians: ours {t_op * 1e3:.1f} ms, gsplat {t_tp * 1e3:.1f} ms "
          f"({t_tp / t_op:.1f}x); max diff on {int(both.sum())} visible (means2d/depths abs, conics rel) {proj_diff:.2e}")
    print(f"[gsplat 1.5.3 torch, CPU] SH degree 3: ours {t_os * 1e3:.1f} ms, gsplat {t_ts * 1e3:.1f} ms "
          f"({t_ts / t_os:.1f}x); max abs diff {sh_diff:.2e}")
    print(f"  (projection radii are not compared: gsplat 1.5.3 uses an opacity-free 3.33-sigma rule, ours the 3-sigma box; "
          f"{_backend.describe()})")


def bench_gsplat_cuda(args, out):
    """gsplat 1.5.3's CUDA rasterization on identical inputs (needs a GPU and gsplat's JIT build)."""
    import gsplat

    from gsplat_kit import rasterization

    for (w, h) in ((800, 600), (1600, 1200)):
        scene = to(capture_like_scene(args.data, args.num_gaussians, w, h), "cuda")
        _, ours, _ = time_fwd_bwd(rasterization, scene, "cuda", repeats=args.repeats, sh_degree=3)
        _, theirs, _ = time_fwd_bwd(gsplat.rasterization, scene, "cuda", repeats=args.repeats, sh_degree=3)
        out.setdefault("gsplat_cuda", []).append({"size": f"{w}x{h}", "ours_ms": ours * 1e3, "gsplat_ms": theirs * 1e3})
        print(f"[gsplat 1.5.3 CUDA] {w}x{h} fwd+bwd: ours {ours * 1e3:.2f} ms, gsplat {theirs * 1e3:.2f} ms "
              f"-> ours/gsplat = {ours / theirs:.2f}")
    big = to(capture_like_scene(args.data, 1_000_000, 1920, 1080), "cuda")
    with torch.no_grad():
        for _ in range(3):
            rasterization(**big, sh_degree=3)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(20):
            rasterization(**big, sh_degree=3)
        torch.cuda.synchronize()
    fps = 20 / (time.perf_counter() - t0)
    out["cuda_1080p_1M_fps"] = fps
    print(f"[kernels/cuda] forward only, 1M Gaussians at 1920x1080: {fps:.0f} fps")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--data", default=DEFAULT_DATA, help="COLMAP capture to sample the scene from")
    p.add_argument("--num-gaussians", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--sizes", default="800x600,1600x1200", type=lambda v: [tuple(map(int, s.split("x"))) for s in v.split(",")],
                   help="image sizes of the kernel timings, e.g. 800x600,1600x1200")
    p.add_argument("--cpu-time", action="store_true",
                   help="time the kernels by the process's CPU time (with OMP_NUM_THREADS=1: robust to a busy machine)")
    p.add_argument("--kernels-only", action="store_true",
                   help="only the kernels' forward + backward (no reference, no gsplat): before/after comparisons")
    p.add_argument("--child", choices=["reference", "native"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time
    if args.child:
        return run_child(args.child, args)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA GPU is visible")
    out = {"date": time.strftime("%Y-%m-%d"), "device": args.device, "torch": torch.__version__,
           "threads": torch.get_num_threads()}
    bench_kernels(args, out)
    if args.kernels_only:
        pass
    elif args.device == "cpu":
        bench_reference(args, out)
        bench_gsplat_torch(args, out)
    else:
        bench_gsplat_cuda(args, out)
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(out, f, indent=2)
        os.replace(args.json + ".tmp", args.json)


if __name__ == "__main__":
    main()
