"""Training on several processes: the Gaussians sharded over torch.distributed ranks (Grendel-GS, and
gsplat's distributed.py). Launch with torchrun; gloo on CPUs, NCCL on GPUs.

Per step, every rank
1. projects its shard of the Gaussians into all B cameras of the batch and evaluates their colours
   (the native projection and SH kernels, as `rasterization` stages them);
2. sends each camera's visible splats (2D mean, conic, colour, opacity, depth, radii) to the rank that
   renders that camera, in one `all_to_all_single` whose backward sends the gradients back the same way;
3. bins and rasterises the splats of its own cameras (all shards' splats, concatenated in global
   order) and takes the photometric loss;
4. after backward, steps its own Adam rows and densifies its shard (`dist_strategy`).

The global order of the Gaussians is the ranks' shards concatenated, so a step on N ranks computes what
a step on one rank computes; the batch sequence is a function of (seed, batch size) alone, so runs on
different world sizes see the same cameras in the same order. Camera slot j of a batch is always drawn
from the views j, j+B, j+2B, ... and rendered by the same rank: a rank loads only those images.

Checkpoints are one file per rank (OUT/ckpts/dist_<step>/rank<r>-of-<N>.pt, complete when all N exist);
resuming on N ranks is bit for bit, on another number of ranks the global order is re-cut into shards.
"""
from __future__ import annotations

import datetime
import math
import os
import random
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
import torch.distributed as dist

from gsplat_kit.common import atomic
from gsplat_kit.common.errors import UserError
from gsplat_kit.render._wrapper import _Projection, _RasterizeToPixels, _SphericalHarmonics, isect_tiles
from gsplat_kit.scene.splats import Splats
from gsplat_kit.train.config import TrainConfig
from gsplat_kit.train.loop import TrainerBase, TrainingDiverged, peak_memory_mb, seed_everything
from gsplat_kit.train.rendering import resolve_device
from gsplat_kit.train.schedules import sh_degree_at

SPLAT_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")
ADAM_ROWS = ("exp_avg", "exp_avg_sq")            # Adam's per-row moments (its "step" is shared by all rows)
STRATEGY_ROWS = ("grad2d", "count", "radii")     # the default strategy's per-Gaussian running statistics
DIST_CKPT = re.compile(r"^dist_(\d+)$")          # OUT/ckpts/dist_<step>/rank<r>-of-<world>.pt


def leave(status: int) -> NoReturn:
    """Ends this rank's process now, without the interpreter's teardown: with a peer gone (and at times
    after a clean run under load) gloo's threads abort that teardown (std::terminate, SIGABRT), which
    would replace the exit status. Every output is already written atomically and closed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


class PeerLost(RuntimeError):
    """Another rank died or stopped answering within the process group's timeout."""


@dataclass
class DistConfig:
    batch_size: int = 0            # cameras per step, B >= world size (0: one per rank)
    backend: str = "auto"          # auto (NCCL on CUDA, gloo on CPU) | gloo | nccl
    timeout_s: float = 300.0       # a collective that waits longer than this fails (a dead or hung rank)
    rebalance_tol: float = 0.1     # rebalance when the largest shard exceeds the smallest by this fraction


# ---- the process group -------------------------------------------------------------------------------

class Comm:
    """This rank's place in the process group, the time it spends in collectives and the bytes its
    all-to-alls receive. One rank needs no process group: every collective is then the identity."""

    def __init__(self, rank: int = 0, world: int = 1, device: torch.device = torch.device("cpu")):
        self.rank, self.world, self.device = rank, world, device
        self.seconds = 0.0
        self.bytes_received = 0

    @classmethod
    def from_process_group(cls, device: torch.device) -> "Comm":
        return cls(dist.get_rank(), dist.get_world_size(), device) if dist.is_initialized() else cls(device=device)

    def _timed(self, fn, *args, **kw):
        t = time.perf_counter()
        try:
            fn(*args, **kw)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        except RuntimeError as e:   # gloo reports a lost peer or a timeout as a plain RuntimeError
            raise PeerLost(f"rank {self.rank} of {self.world}: a collective failed, another rank died or stopped "
                           f"answering ({str(e).strip().splitlines()[0][:200]})") from None
        finally:
            self.seconds += time.perf_counter() - t

    def all_to_all(self, x: torch.Tensor, out_splits: list[int], in_splits: list[int]) -> torch.Tensor:
        """Rows x[sum(in_splits[:d]) : ...+in_splits[d]] go to rank d; rows from rank s arrive in block s."""
        if self.world == 1:
            return x.clone()
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        self._timed(dist.all_to_all_single, out, x.contiguous(), out_splits, in_splits)
        self.bytes_received += out.numel() * out.element_size()
        return out

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """Same-shape tensors of all ranks, stacked: [world, *x.shape]."""
        if self.world == 1:
            return x[None].clone()
        parts = [torch.empty_like(x) for _ in range(self.world)]
        self._timed(dist.all_gather, parts, x.contiguous())
        return torch.stack(parts)

    def sizes(self, n: int) -> list[int]:
        return self.all_gather(torch.tensor([n], dtype=torch.int64, device=self.device))[:, 0].tolist()

    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return x
        x = x.clone()
        self._timed(dist.all_reduce, x)
        return x

    def gather_rows(self, x: torch.Tensor, dst: int = 0) -> torch.Tensor | None:
        """The shards' rows concatenated in rank order, on rank `dst` (None elsewhere)."""
        if self.world == 1:
            return x
        sizes = self.sizes(len(x))
        pad = x.new_zeros((max(sizes), *x.shape[1:]))
        pad[:len(x)] = x
        parts = [torch.empty_like(pad) for _ in range(self.world)] if self.rank == dst else None
        self._timed(dist.gather, pad, parts, dst=dst)
        return torch.cat([p[:s] for p, s in zip(parts, sizes)]) if self.rank == dst else None

    def barrier(self):
        if self.world > 1:
            self._timed(dist.barrier)

    def broadcast_object(self, obj, src: int = 0):
        if self.world == 1:
            return obj
        box = [obj]
        self._timed(dist.broadcast_object_list, box, src=src)
        return box[0]


def init_process_group(device_name: str, backend: str = "auto", timeout_s: float = 300.0) -> tuple[Comm, torch.device]:
    """Joins the process group that torchrun (or any launcher setting RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT) describes; picks this rank's device and the backend from it."""
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing and not dist.is_initialized():
        raise UserError(f"--distributed: {', '.join(missing)} not set; launch with `torchrun --nproc-per-node N -m "
                        f"gsplat_kit.cli train --distributed ...`")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local % torch.cuda.device_count())
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend not in ("gloo", "nccl"):
        raise UserError(f"--dist-backend must be auto, gloo or nccl, got {backend!r}")
    if backend == "nccl" and device.type != "cuda":
        raise UserError("--dist-backend nccl needs CUDA devices (use gloo on CPUs)")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=device if backend == "nccl" else None)
    return Comm.from_process_group(device), device


# ---- the exchange of projected splats -----------------------------------------------------------------

class _AllToAll(torch.autograd.Function):
    """Differentiable all_to_all_single: the gradients of the received rows go back to their senders.
    (torch.distributed.nn.functional.all_to_all_single does the same but is deprecated in torch 2.14.)"""

    @staticmethod
    def forward(ctx, x, comm: Comm, out_splits: list[int], in_splits: list[int]):
        ctx.comm, ctx.splits = comm, (out_splits, in_splits)
        return comm.all_to_all(x, out_splits, in_splits)

    @staticmethod
    def backward(ctx, grad):
        out_splits, in_splits = ctx.splits
        return ctx.comm.all_to_all(grad.contiguous(), in_splits, out_splits), None, None, None


def camera_owners(batch_size: int, world: int) -> list[int]:
    """Which rank renders each camera slot of a batch: contiguous blocks, sizes differing by at most one."""
    if batch_size < world:
        raise UserError(f"--batch-size {batch_size} is smaller than the world size {world}: every rank must render "
                        f"at least one camera per step")
    return [r for r in range(world) for _ in range(batch_size // world + (r < batch_size % world))]


# packed splat features sent to the rendering rank: means2d 2, conics 3, rgb 3, opacity 1, depth 1
_F_MEANS, _F_CONICS, _F_RGB, _F_OPAC, _F_DEPTH = slice(0, 2), slice(2, 5), slice(5, 8), 8, 9


def render_batch(shard: dict, viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int, owners: list[int],
                 sh_degree: int, comm: Comm, backgrounds: torch.Tensor | None = None, near_plane: float = 0.01,
                 far_plane: float = 1e10, rasterize_mode: str = "classic", eps2d: float = 0.3, tile_size: int = 16):
    """Renders this rank's cameras of a batch from all shards' Gaussians.

    shard: this rank's raw parameters (means, scales (log), quats, opacities (logit), sh0, shN); viewmats
    [B, 4, 4], Ks [B, 3, 3], backgrounds [B, 3] or None: the whole batch, the same on every rank; owners[b]
    the rank rendering camera b. Returns (rgb [B_r, H, W, 3], alpha [B_r, H, W, 1], info) where info holds
    this shard's projection into all B cameras (means2d [B, N_r, 2], radii [B, N_r, 2], width, height,
    n_cameras) as `rasterization`'s meta does, so a densification strategy reads the gradient statistics
    of the whole batch for its own Gaussians.
    """
    B, N = len(viewmats), len(shard["means"])
    mine = [b for b in range(B) if owners[b] == comm.rank]
    act = Splats(shard).activated()      # the activations of the single-process trainer's `render`
    means = act["means"].contiguous()
    radii, means2d, depths, conics, comps = _Projection.apply(
        means, act["quats"].contiguous(), act["scales"].contiguous(), None, viewmats.contiguous(), Ks.contiguous(),
        width, height, float(eps2d), float(near_plane), float(far_plane), 0.0)
    opac = act["opacities"][None].expand(B, N)
    if rasterize_mode == "antialiased":
        opac = opac * comps
    campos = torch.linalg.inv(viewmats)[:, :3, 3]
    dirs = (means[None] - campos[:, None]).reshape(B * N, 3)
    K = (sh_degree + 1) ** 2
    coeffs = act["colors"][:, :K].contiguous()
    rgb = _SphericalHarmonics.apply(sh_degree, dirs.contiguous(), coeffs).reshape(B, N, 3)
    rgb = torch.clamp_min(rgb + 0.5, 0.0)

    # only the splats a camera sees travel; rows ordered camera by camera, so grouped by the rendering rank
    visible = (radii > 0).all(-1)                                                    # [B, N]
    counts = visible.sum(1)                                                          # [B]
    all_counts = comm.all_gather(counts).tolist()                                    # [world][B]
    feats = torch.cat([means2d, conics, rgb, opac[..., None], depths[..., None]], -1)[visible]
    in_splits = [sum(c for c, o in zip(all_counts[comm.rank], owners) if o == d) for d in range(comm.world)]
    out_splits = [sum(all_counts[s][b] for b in mine) for s in range(comm.world)]
    recv = _AllToAll.apply(feats, comm, out_splits, in_splits)
    recv_radii = comm.all_to_all(radii[visible], out_splits, in_splits)

    # block s of what arrived holds rank s's splats of my cameras, camera by camera: regroup per camera
    starts, at = {}, 0
    for s in range(comm.world):
        for b in mine:
            starts[s, b] = at
            at += all_counts[s][b]
    tiles_w, tiles_h = math.ceil(width / tile_size), math.ceil(height / tile_size)
    rgbs, alphas = [], []
    for b in mine:
        rows = [(starts[s, b], starts[s, b] + all_counts[s][b]) for s in range(comm.world)]
        splats = torch.cat([recv[i:j] for i, j in rows])[None]                      # [1, M, 10]
        r = torch.cat([recv_radii[i:j] for i, j in rows])[None]
        m2d = splats[..., _F_MEANS].contiguous()
        _, _, flatten_ids, isect_offsets = isect_tiles(m2d, r, splats[..., _F_DEPTH].contiguous(), tile_size, tiles_w,
                                                       tiles_h, width, height)
        bg = None if backgrounds is None else backgrounds[b:b + 1].contiguous()
        c, a = _RasterizeToPixels.apply(m2d, splats[..., _F_CONICS].contiguous(), splats[..., _F_RGB].contiguous(),
                                        splats[..., _F_OPAC].contiguous(), bg, isect_offsets, flatten_ids, width,
                                        height, tile_size, False)
        rgbs.append(c)
        alphas.append(a)
    info = {"means2d": means2d, "radii": radii, "depths": depths, "width": width, "height": height, "n_cameras": B,
            "visible_per_camera": counts}
    return torch.cat(rgbs), torch.cat(alphas), info


# ---- shards ---------------------------------------------------------------------------------------------

def balanced_sizes(n: int, world: int) -> list[int]:
    return [n // world + (r < n % world) for r in range(world)]


def shard_of(t: torch.Tensor, comm: Comm) -> torch.Tensor:
    """This rank's contiguous block of rows of a tensor that every rank holds whole."""
    sizes = balanced_sizes(len(t), comm.world)
    start = sum(sizes[:comm.rank])
    return t[start:start + sizes[comm.rank]]


def _moved(t: torch.Tensor, comm: Comm, old: list[int], new: list[int]) -> torch.Tensor:
    """Rows re-split from the boundaries `old` to `new`, keeping the global order."""
    def blocks(sizes):
        starts = np.concatenate([[0], np.cumsum(sizes)])
        return [(int(starts[r]), int(starts[r + 1])) for r in range(len(sizes))]

    overlap = lambda a, b: max(0, min(a[1], b[1]) - max(a[0], b[0]))
    mine_old, mine_new = blocks(old)[comm.rank], blocks(new)[comm.rank]
    in_splits = [overlap(mine_old, blk) for blk in blocks(new)]
    out_splits = [overlap(blk, mine_new) for blk in blocks(old)]
    return comm.all_to_all(t, out_splits, in_splits)


@torch.no_grad()
def rebalance(params: dict, optimizers: dict, state: dict, comm: Comm, tol: float = 0.1) -> list[int]:
    """Evens out the shard sizes when the largest exceeds the smallest by more than `tol`: rows cross the
    shard boundaries with their Adam moments and the strategy's per-Gaussian statistics, keeping the global
    order. Returns the shard sizes of all ranks afterwards."""
    old = comm.sizes(len(params["means"]))
    if comm.world == 1 or max(old) <= (1.0 + tol) * min(old):
        return old
    new = balanced_sizes(sum(old), comm.world)
    for name in SPLAT_KEYS:
        p = params[name]
        moved = torch.nn.Parameter(_moved(p.data, comm, old, new), requires_grad=p.requires_grad)
        params[name] = moved
        opt = optimizers[name]
        pstate = opt.state.pop(p, {})
        for key in ADAM_ROWS:   # present on every rank: rebalancing follows an optimizer step
            pstate[key] = _moved(pstate[key], comm, old, new)
        opt.param_groups[0]["params"] = [moved]
        if pstate:
            opt.state[moved] = pstate
    for key in STRATEGY_ROWS:
        if isinstance(state.get(key), torch.Tensor):
            state[key] = _moved(state[key], comm, old, new)
    return new


# ---- the batch sampler ----------------------------------------------------------------------------------

class BatchSampler:
    """B camera slots; slot j draws shuffled passes over the views j, j+B, j+2B, ... from its own seeded
    generator. The batches depend on (seed, B) alone, not on the world size, and the rank rendering slot j
    only ever loads the images of that slot's views."""

    def __init__(self, n_views: int, batch_size: int, seed: int):
        from gsplat_kit.train.trainer import ViewSampler

        if batch_size > n_views:
            raise UserError(f"--batch-size {batch_size} exceeds the {n_views} training views")
        self.slots = [list(range(j, n_views, batch_size)) for j in range(batch_size)]
        self.samplers = [ViewSampler(len(s), seed + 7919 * j) for j, s in enumerate(self.slots)]

    def next(self) -> list[int]:
        return [slot[s.next()] for slot, s in zip(self.slots, self.samplers)]

    def random_colors(self) -> torch.Tensor:
        return torch.stack([s.random_color() for s in self.samplers])

    def state_dict(self) -> dict:
        return {"slots": [s.state_dict() for s in self.samplers]}

    def load_state_dict(self, st: dict):
        if len(st["slots"]) != len(self.samplers):
            raise UserError(f"the checkpoint was trained with --batch-size {len(st['slots'])}, "
                            f"not {len(self.samplers)}")
        for s, x in zip(self.samplers, st["slots"]):
            s.load_state_dict(x)


# ---- checkpoints: one shard file per rank ------------------------------------------------------------------

def shard_file(folder: Path, rank: int, world: int) -> Path:
    return folder / f"rank{rank}-of-{world}.pt"


def complete_checkpoints(out) -> list[tuple[int, Path, int]]:
    """(step, folder, world size) of every checkpoint under OUT/ckpts whose shards are all present, oldest
    first. Each shard is written atomically, so a present shard is whole; a missing one makes the
    checkpoint incomplete and it is never resumed from."""
    root = Path(out) / "ckpts"
    found = []
    for d in (root.iterdir() if root.is_dir() else []):
        m = DIST_CKPT.match(d.name)
        if not (m and d.is_dir()):
            continue
        by_world: dict[int, set[int]] = {}
        for f in d.iterdir():
            fm = re.match(r"^rank(\d+)-of-(\d+)\.pt$", f.name)
            if fm:
                by_world.setdefault(int(fm.group(2)), set()).add(int(fm.group(1)))
        for w, ranks in by_world.items():
            if ranks == set(range(w)):
                found.append((int(m.group(1)), d, w))
    return sorted(found)


def _rng_state(device: torch.device) -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    s = {"torch": torch.get_rng_state(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                    int(has_gauss), float(cached)], "python": random.getstate()}
    if device.type == "cuda":
        s["cuda"] = torch.cuda.get_rng_state(device)
    return s


def _set_rng_state(s: dict, device: torch.device):
    torch.set_rng_state(s["torch"])
    name, keys, pos, has_gauss, cached = s["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate((s["python"][0], tuple(s["python"][1]), s["python"][2]))
    if "cuda" in s and device.type == "cuda":
        torch.cuda.set_rng_state(s["cuda"], device)


def _resume_folder(out: Path, resume: str) -> tuple[Path, int] | None:
    """The checkpoint folder to continue from (`resume`: "auto" = the latest complete one) and the number of
    ranks that wrote it."""
    if resume == "auto":
        done = complete_checkpoints(out)
        if not done:
            return None
        step, folder, w = done[-1]
    else:
        folder = Path(resume)
        folder = folder.parent if folder.is_file() else folder
        m = [c for c in complete_checkpoints(folder.parent.parent) if c[1].resolve() == folder.resolve()]
        if not m:
            raise UserError(f"--resume {resume}: not a complete distributed checkpoint (a folder "
                            f"OUT/ckpts/dist_<step> holding rank<r>-of-<N>.pt for every rank r)")
        step, folder, w = m[-1]
    return folder, w


def _resharded(folder: Path, old_world: int, comm: Comm) -> dict:
    """This rank's part of a checkpoint written by `old_world` ranks, cut at this world's balanced
    boundaries: the rows of the old shards that overlap its range, concatenated in global order, for the
    parameters, the Adam moments and the strategy's per-Gaussian statistics. Everything else (the step,
    the sampler, Adam's step count, the strategy's scalars) is the same in every shard."""
    from gsplat_kit.common.safe_load import load_torch_data

    loaded = {}

    def shard(r):
        if r not in loaded:
            loaded[r] = load_torch_data(shard_file(folder, r, old_world), "checkpoint shard")
        return loaded[r]

    first = shard(0)
    old = first.get("shard_sizes") or [len(shard(r)["splats"]["means"]) for r in range(old_world)]
    new = balanced_sizes(sum(old), comm.world)
    lo, hi = sum(new[:comm.rank]), sum(new[:comm.rank + 1])
    parts, start = [], 0
    for r, n in enumerate(old):
        a, b = max(lo, start), min(hi, start + n)
        if a < b:
            parts.append((shard(r), a - start, b - start))
        start += n
    cat = lambda get: torch.cat([get(ck)[a:b] for ck, a, b in parts]) if parts else get(first)[:0]
    out = {**first, "rank": comm.rank, "world_size": comm.world, "shard_sizes": new}
    out["splats"] = {k: cat(lambda ck, k=k: ck["splats"][k]) for k in first["splats"]}
    out["optimizers"] = {}
    for k, sd in first["optimizers"].items():
        rows = {m: cat(lambda ck, k=k, m=m: ck["optimizers"][k]["state"][0][m]) for m in ADAM_ROWS}
        out["optimizers"][k] = {**sd, "state": {0: {**sd["state"][0], **rows}}}
    out["strategy_state"] = {k: (cat(lambda ck, k=k: ck["strategy_state"][k]) if k in STRATEGY_ROWS and
                                 isinstance(v, torch.Tensor) else v) for k, v in first["strategy_state"].items()}
    return out


# ---- the trainer ------------------------------------------------------------------------------------------

class DistributedTrainer(TrainerBase):
    """`DistributedTrainer(cfg, dcfg, comm, device, out).train()` on every rank of a process group (see
    `train_distributed` for the whole launch). Shares the single-process trainer's step, loop and report
    (`TrainerBase`), TrainConfig, the initialisation and the strategies (through dist_strategy).
    `scene` may be given directly (as for Trainer), and `shard`, this rank's initial Gaussians, instead of
    the initialisation from the scene's points (a scene too large to initialise in one process)."""

    def __init__(self, cfg: TrainConfig, dcfg: DistConfig, comm: Comm, device: torch.device, out: str | None = None,
                 scene=None, shard: dict | None = None):
        from gsplat_kit.train.dist_strategy import ShardedStrategy
        from gsplat_kit.train.init import init_splats
        from gsplat_kit.train.strategy import make_strategy

        self.cfg, self.dcfg, self.comm, self.device = cfg.validate(), dcfg, comm, device
        self.out = out or cfg.out
        self._use_threads()
        self._use_scene(scene)
        scene = self.scene
        sizes = {(v.width, v.height) for v in scene.train_views}
        if len(sizes) > 1:
            raise UserError(f"{cfg.data}: --distributed renders a batch at one image size, but the training views have "
                            f"{len(sizes)} sizes ({sorted(sizes)[:3]}...)")
        self.width, self.height = sizes.pop()
        self.batch_size = dcfg.batch_size or comm.world
        self.owners = camera_owners(self.batch_size, comm.world)
        self.mine = [b for b, o in enumerate(self.owners) if o == comm.rank]
        self.strategy = ShardedStrategy(make_strategy(cfg.strategy, **cfg.strategy_options), comm)
        self.sampler = BatchSampler(len(scene.train_views), self.batch_size, cfg.seed)
        self.step, self.elapsed, self.last_ckpt = 0, 0.0, None
        seed_everything(cfg.seed + comm.rank)

        found = _resume_folder(Path(self.out), cfg.resume) if cfg.resume and self.out else None
        if cfg.resume == "auto" and found is None and comm.rank == 0:
            print(f"resume: no complete distributed checkpoint under {Path(self.out) / 'ckpts'}; starting from step 0",
                  file=sys.stderr)
        if found is not None:
            self._restore(*found)
        elif shard is not None:
            self._start_from({k: torch.nn.Parameter(shard[k].to(device)) for k in SPLAT_KEYS})
        else:
            full = init_splats(scene.points, scene.points_rgb, cfg.sh_degree, cfg.init_opacity, cfg.init_scale, "cpu")
            self._start_from({k: torch.nn.Parameter(shard_of(v.data, comm).clone().to(device)) for k, v in full.items()})
        self.strategy.sizes = comm.sizes(len(self.splats["means"]))
        self.strategy.check_sanity(self.splats, self.optimizers)

    # --- setup ---------------------------------------------------------------------------------------
    # gsplat's Adam for a batch of B cameras: lr x sqrt(B), eps / sqrt(B), betas 1 - B (1 - beta) (kept >= 0)
    def learning_rates(self) -> dict:
        return {k: lr * math.sqrt(self.batch_size) for k, lr in self.base_learning_rates().items()}

    def adam_options(self) -> dict:
        B = self.batch_size
        return {"eps": 1e-15 / math.sqrt(B), "betas": (max(1.0 - B * 0.1, 0.0), max(1.0 - B * 0.001, 0.0))}

    def _restore(self, folder: Path, old_world: int):
        """Continues bit for bit from a checkpoint of the same world size; one written by another number of
        ranks is resharded (the same Gaussians, moments and batches; each rank's random stream restarts)."""
        from gsplat_kit.common.safe_load import load_torch_data

        path = shard_file(folder, self.comm.rank, self.comm.world)
        if old_world == self.comm.world:
            ck = load_torch_data(path, "checkpoint shard")
        else:
            ck = _resharded(folder, old_world, self.comm)
            if self.comm.rank == 0:
                print(f"resume: {folder} was written by {old_world} ranks; resharded onto {self.comm.world} (the run "
                      f"continues, but not bit for bit: each rank's random stream restarts)", file=sys.stderr)
        self._check_strategy(ck, path)
        if ck["batch_size"] != self.batch_size:
            raise UserError(f"{path} was trained with --batch-size {ck['batch_size']}, not {self.batch_size}")
        self._restore_params(ck, folder)
        self.sampler.load_state_dict(ck["sampler"])
        if old_world == self.comm.world:
            _set_rng_state(ck["rng"], self.device)
        else:
            seed_everything(self.cfg.seed + self.comm.rank + 1_000_003 * int(ck["step"]))

    @property
    def num_gaussians(self) -> int:
        return sum(self.strategy.sizes)

    # --- checkpoints ---------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Every rank writes its shard (atomically); the checkpoint is complete once all are written."""
        bad = sum(int(not torch.isfinite(v).all()) for v in self.splats.values())
        if int(self.comm.all_sum(torch.tensor([bad], device=self.device))[0]):
            raise TrainingDiverged(f"parameters are not finite at step {self.step}; not writing a checkpoint (the last "
                                   f"good one is {self.last_ckpt or 'none'})")
        folder = Path(self.out) / "ckpts" / f"dist_{self.step:06d}"
        obj = {"format": "gsplat_kit distributed checkpoint shard", "step": self.step, "rank": self.comm.rank,
               "world_size": self.comm.world, "batch_size": self.batch_size, "shard_sizes": list(self.strategy.sizes),
               "splats": {k: v.detach().cpu() for k, v in self.splats.items()},
               "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
               "strategy_state": {k: (v.cpu() if isinstance(v, torch.Tensor) else v)
                                  for k, v in self.strategy_state.items()},
               "sampler": self.sampler.state_dict(), "rng": _rng_state(self.device), "config": self.cfg.to_dict(),
               "elapsed": self.elapsed}
        with atomic.atomic_path(shard_file(folder, self.comm.rank, self.comm.world)) as tmp:
            torch.save(obj, tmp)
        self.comm.barrier()
        self.last_ckpt = str(folder)
        if self.comm.rank == 0 and self.cfg.keep_ckpts > 0:
            for _, old, _ in complete_checkpoints(self.out)[:-self.cfg.keep_ckpts]:
                shutil.rmtree(old, ignore_errors=True)
        return folder

    # --- loop ----------------------------------------------------------------------------------------
    def train_steps(self, until: int | None = None):
        """Runs steps self.step .. until-1 (default cfg.steps) on every rank."""
        cfg, comm, B = self.cfg, self.comm, self.batch_size
        mode = "antialiased" if cfg.antialiased else "classic"
        dtype = self.splats["means"].dtype

        def one_step(step: int):
            idx = self.sampler.next()
            views = [self.scene.train_views[i] for i in idx]
            viewmats = torch.stack([torch.as_tensor(v.viewmat) for v in views]).to(self.device, dtype)
            Ks = torch.stack([torch.as_tensor(v.K) for v in views]).to(self.device, dtype)
            if cfg.random_background:
                bgs = self.sampler.random_colors()
            else:
                bgs = None if self.background is None else self.background[None].expand(B, 3)
            bgs = None if bgs is None else bgs.to(self.device, dtype)
            rgb, _, info = render_batch(self.splats, viewmats, Ks, self.width, self.height, self.owners,
                                        sh_degree_at(step, cfg.sh_degree, cfg.sh_degree_interval), comm, bgs,
                                        cfg.near_plane, cfg.far_plane, mode)
            self.strategy.step_pre_backward(self.splats, self.optimizers, self.strategy_state, step, info)
            loss = sum(self._view_loss(rgb[j:j + 1], self._image(idx[b])[None].to(dtype), views[b])
                       for j, b in enumerate(self.mine)) / B
            reg = self.strategy.regularization(self.splats)
            if reg is not None:
                loss = loss + reg
            loss_v = float(comm.all_sum(loss.detach().reshape(1))[0])
            self._backward_and_step(loss, loss_v, step, info, where=f" (views {', '.join(str(v.name) for v in views)})")
            self.strategy.sizes = rebalance(self.splats, self.optimizers, self.strategy_state, comm,
                                            self.dcfg.rebalance_tol)
            return loss_v, None

        self._run_steps(until, one_step, cfg.progress and comm.rank == 0)

    def gathered_splats(self) -> dict | None:
        """All shards' parameters in global order, on rank 0 (None on the others)."""
        return {k: self.comm.gather_rows(v.detach()) for k, v in self.splats.items()} if self.comm.world > 1 else \
            {k: v.detach() for k, v in self.splats.items()}

    def train(self) -> dict | None:
        """The whole job; rank 0 writes config.json, point_cloud.ply (gathered), eval/ and metrics.json and
        returns the metrics, the other ranks return None."""
        comm = self.comm
        start_step = self.step
        if comm.rank == 0:
            self._write_config(start_step, distributed={
                **asdict(self.dcfg), "batch_size": self.batch_size, "world_size": comm.world,
                "backend": dist.get_backend() if dist.is_initialized() else None, "camera_owners": self.owners})
        self.train_steps()
        self.save_checkpoint()
        per_rank = comm.all_gather(torch.tensor([len(self.splats["means"]), peak_memory_mb(self.device),
                                                 comm.seconds, self.elapsed], dtype=torch.float64,
                                                device=self.device)).cpu()
        splats = self.gathered_splats()
        if comm.rank != 0:
            return None
        from gsplat_kit.train.export import write_ply

        write_ply(os.path.join(self.out, "point_cloud.ply"), splats)
        return self._write_metrics(
            {k: v.float() for k, v in splats.items()}, start_step, batch_size=self.batch_size, world_size=comm.world,
            gaussians_per_rank=[int(x) for x in per_rank[:, 0]],
            peak_memory_mb_per_rank=[round(float(x), 1) for x in per_rank[:, 1]],
            comm_time_s_per_rank=[round(float(x), 3) for x in per_rank[:, 2]])


def train_distributed(cfg: TrainConfig, dcfg: DistConfig, overwrite: bool = False) -> dict | None:
    """Joins the process group (torchrun's environment), trains, and leaves it. Rank 0 claims the output
    folder (one run per folder) and tells the others where to write. Returns rank 0's metrics."""
    from gsplat_kit.common.run_folder import RunFolder

    if not cfg.out:
        raise UserError("an output folder (--out) is required")
    comm, device = init_process_group(cfg.device, dcfg.backend, dcfg.timeout_s)
    run, lost = None, False
    try:
        claimed = None
        if comm.rank == 0:
            try:
                run = RunFolder.claim(cfg.out, "train", resume=cfg.resumes_in_place(), overwrite=overwrite)
                claimed = ("ok", str(run.path))
            except UserError as e:
                claimed = ("error", str(e))
        status, value = comm.broadcast_object(claimed)
        if status == "error":
            raise UserError(value)
        metrics = DistributedTrainer(cfg, dcfg, comm, device, out=value).train()
        if run is not None:
            run.finish()
            run = None
        return metrics
    except PeerLost:
        lost = True
        raise
    finally:
        if run is not None:
            run.release()
        if dist.is_initialized() and not lost:  # after a lost peer there is no clean shutdown: see `leave`
            dist.destroy_process_group()
