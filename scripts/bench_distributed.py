"""Benchmark of sharded training (gsplat_kit.train.distributed) at 1, 2, ... ranks, launched with torchrun.

Real scene: the same scene and total batch of cameras on each world size; per step time, the share of the
step spent in collectives (the exchange of projected splats, its backward, the small gathers; waiting
for a slower rank counts here too), peak memory per rank and Gaussians per rank.

Synthetic scale: `--synthetic N` Gaussians (e.g. 10M) in a flat "city block" seen from cameras that
each see a part of it, trained for a few steps at tiny resolution with `--max-memory` as each process's
budget (a watchdog ends a rank that goes over it): one process does not fit, the sharded run does.

    python scripts/bench_distributed.py --data ../shared/data/cup_kwrous --data-factor 4 --worlds 1,2
    python scripts/bench_distributed.py --synthetic 10000000 --worlds 1,2 --max-memory 4G --steps 2
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVER_BUDGET_EXIT = 4


def parse_bytes(s: str) -> int:
    units = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30}
    s = s.strip().upper().rstrip("B")
    return int(float(s[:-1]) * units[s[-1]]) if s and s[-1] in units else int(s)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def watch_memory(budget: int, rank: int, trainer_ref: list):
    """Ends this rank (exit 4) as soon as its resident memory exceeds `budget` bytes."""
    def loop():
        while True:
            rss = rss_bytes()
            if rss > budget:
                step = trainer_ref[0].step if trainer_ref else "setup"
                print(f"rank {rank}: over the memory budget ({rss / 2 ** 20:.0f} MiB > {budget / 2 ** 20:.0f} MiB) at "
                      f"step {step}", file=sys.stderr, flush=True)
                os._exit(OVER_BUDGET_EXIT)
            time.sleep(0.02)

    threading.Thread(target=loop, daemon=True).start()


# ---- the synthetic scene ------------------------------------------------------------------------------------

class _View:
    def __init__(self, name, viewmat, K, width, height, image):
        self.name, self.viewmat, self.K, self.width, self.height, self._image = name, viewmat, K, width, height, image

    def load_image(self):
        return self._image


class _Scene:
    def __init__(self, views, scene_scale):
        import torch

        self.train_views, self.test_views = views, []
        self.points, self.points_rgb = torch.zeros(1, 3), torch.zeros(1, 3)
        self.scene_scale, self.background = scene_scale, None


def synthetic_scene(n_views: int, width: int, height: int, extent: float = 10.0):
    """Cameras 6 units above a 2*extent square slab, looking down at different parts of it."""
    import torch

    views = []
    for i in range(n_views):
        a = 2 * math.pi * i / n_views
        x, y = 0.5 * extent * math.cos(a), 0.5 * extent * math.sin(a)
        # world-to-camera for a camera at (x, y, 6) looking down -z (OpenCV: x right, y down, z forward)
        R = torch.tensor([[1.0, 0, 0], [0, -1.0, 0], [0, 0, -1.0]])
        vm = torch.eye(4)
        vm[:3, :3] = R
        vm[:3, 3] = -R @ torch.tensor([x, y, 6.0])
        K = torch.tensor([[1.2 * width, 0, width / 2], [0, 1.2 * width, height / 2], [0, 0, 1.0]])
        u = torch.linspace(0, 1, width)[None, :, None]
        v = torch.linspace(0, 1, height)[:, None, None]
        img = torch.cat([u.expand(height, width, 1), v.expand(height, width, 1),
                         torch.full((height, width, 1), 0.5 + 0.4 * math.sin(a))], -1)
        views.append(_View(f"synthetic_{i:03d}", vm, K, width, height, img))
    return _Scene(views, extent)


def synthetic_shard(n_total: int, rank: int, world: int, extent: float = 10.0, seed: int = 0) -> dict:
    """This rank's block of n_total random Gaussians (made on the rank: the whole set never exists anywhere)."""
    import torch

    from gsplat_kit.train.distributed import balanced_sizes

    n = balanced_sizes(n_total, world)[rank]
    g = torch.Generator().manual_seed(seed * 1000 + rank)
    means = torch.rand(n, 3, generator=g) * 2 - 1
    means[:, :2] *= extent
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1
    return {"means": means, "scales": torch.log(0.01 + 0.03 * torch.rand(n, 3, generator=g)), "quats": quats,
            "opacities": torch.full((n,), 0.0), "sh0": torch.randn(n, 1, 3, generator=g) * 0.5,
            "shN": torch.zeros(n, 0, 3)}


# ---- one rank ---------------------------------------------------------------------------------------------

def worker(a) -> int:
    import torch

    from gsplat_kit.train.config import TrainConfig
    from gsplat_kit.train.distributed import DistConfig, DistributedTrainer, init_process_group

    torch.set_num_threads(a.threads)
    holder: list = []
    comm, device = init_process_group(a.device, "auto", a.timeout)
    if a.max_memory:
        watch_memory(parse_bytes(a.max_memory), comm.rank, holder)
    base_rss = rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    total = a.warmup + a.steps
    # no densification while timing: every world size times the same Gaussians
    cfg = TrainConfig(data=a.data or "", data_factor=a.data_factor, steps=total, ckpt_every=0, eval=False,
                      progress=False, num_threads=a.threads, device=a.device, test_every=8,
                      sh_degree=0 if a.synthetic else 3, strategy_options={"refine_start_iter": 10 ** 9})
    if a.synthetic:
        scene = synthetic_scene(max(a.batch_size, 8), a.width, a.height)
        tr = DistributedTrainer(cfg, DistConfig(batch_size=a.batch_size, timeout_s=a.timeout), comm, device,
                                scene=scene, shard=synthetic_shard(a.synthetic, comm.rank, comm.world))
    else:
        tr = DistributedTrainer(cfg, DistConfig(batch_size=a.batch_size, timeout_s=a.timeout), comm, device)
    holder.append(tr)
    tr.train_steps(until=a.warmup)
    c0, b0, t0 = comm.seconds, comm.bytes_received, time.perf_counter()
    tr.train_steps(until=total)
    dt, comm_s, recv = time.perf_counter() - t0, comm.seconds - c0, comm.bytes_received - b0
    from gsplat_kit.train.trainer import peak_memory_mb

    peak = peak_memory_mb(device)
    row = torch.tensor([dt, comm_s, peak, base_rss / 2 ** 20, len(tr.splats["means"]), recv], dtype=torch.float64,
                       device=device)
    rows = comm.all_gather(row).cpu().tolist()
    if comm.rank == 0:
        res = {"world_size": comm.world, "batch_size": tr.batch_size, "steps": a.steps, "threads_per_rank": a.threads,
               "device": str(device), "num_gaussians": sum(int(r[4]) for r in rows),
               "step_s": round(max(r[0] for r in rows) / a.steps, 4),
               "comm_share": round(max(r[1] / r[0] for r in rows), 3),
               "peak_memory_mb_per_rank": [round(r[2]) for r in rows],
               "start_memory_mb_per_rank": [round(r[3]) for r in rows],
               "gaussians_per_rank": [int(r[4]) for r in rows],
               # all-to-all traffic (splats forward + their gradients backward + rebalancing), per rank
               "received_mb_per_step_per_rank": [round(r[5] / a.steps / 2 ** 20, 2) for r in rows]}
        with open(a.result, "w") as f:
            json.dump(res, f)
    import torch.distributed as dist

    dist.destroy_process_group()
    return 0


# ---- the launcher -----------------------------------------------------------------------------------------

def launch(a, world: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "result.json")
        args = sys.argv[1:]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world),
               os.path.abspath(__file__), *args, "--worker", "--result", result]
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE",
               "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        t = time.time()
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        if r.returncode != 0:
            over = [ln for ln in r.stderr.splitlines() if "over the memory budget" in ln]
            if over:
                return {"world_size": world, "fits": False, "why": over[0].strip()}
            raise SystemExit(f"{world} rank(s) failed:\n{r.stderr[-4000:]}")
        with open(result) as f:
            return {**json.load(f), "fits": True, "wall_s": round(time.time() - t, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="a scene folder (COLMAP or NeRF-synthetic)")
    p.add_argument("--data-factor", type=int, default=4)
    p.add_argument("--synthetic", type=int, default=0, help="instead of --data: this many random Gaussians")
    p.add_argument("--width", type=int, default=64, help="synthetic: image width")
    p.add_argument("--height", type=int, default=48, help="synthetic: image height")
    p.add_argument("--worlds", default="1,2", help="world sizes to run, comma-separated")
    p.add_argument("--batch-size", type=int, default=2, help="cameras per step (the same total for every world size)")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="CPU threads per rank")
    p.add_argument("--device", default="cpu")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--max-memory", default=None, help="per-process memory budget, e.g. 4G: a rank above it stops")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)
    if not a.data and not a.synthetic:
        p.error("give --data DIR or --synthetic N")
    rows = [launch(a, int(w)) for w in a.worlds.split(",")]
    for r in rows:
        print(json.dumps(r))
    if a.json:
        from gsplat_kit.common.atomic import write_json

        write_json(a.json, {"argv": sys.argv[1:], "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
