"""Distributed-training test helpers: `launch` starts N ranks on loopback with the environment torchrun
would set; run as a script, this file is the worker those ranks execute (`python dist_helpers.py OUT
CASE[:ARG...] ...`, the cases one after another), each case writing what rank 0 gathered to OUT for
the test to compare."""
import os
import socket
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, *args: str, timeout_s: float = 60) -> list[subprocess.Popen]:
    """Starts `world` ranks of this worker; returns their processes (stdout and stderr captured)."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "DIST_TIMEOUT": str(timeout_s),
               "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        procs.append(subprocess.Popen([sys.executable, __file__, *args], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return procs


def run(world: int, *args: str, timeout: float = 300) -> None:
    """Runs `world` ranks to completion; raises with their output if any fails."""
    procs = launch(world, *args, timeout_s=timeout)
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    bad = [(r, p.returncode, o) for r, (p, o) in enumerate(zip(procs, outs)) if p.returncode != 0]
    if bad:
        raise AssertionError("\n".join(f"rank {r} exited {rc}:\n{o[0][-3000:]}\n{o[1][-3000:]}" for r, rc, o in bad))


# ---- the worker -------------------------------------------------------------------------------------------

def _gaussians(n: int, dtype, seed: int = 0) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    p = {"means": (torch.rand(n, 3, generator=g) - 0.5) * 1.6,
         "scales": torch.log(0.05 + 0.1 * torch.rand(n, 3, generator=g)),
         "quats": torch.randn(n, 4, generator=g),
         "opacities": torch.logit(0.2 + 0.7 * torch.rand(n, generator=g)),
         "sh0": torch.randn(n, 1, 3, generator=g) * 0.8,
         "shN": torch.randn(n, 15, 3, generator=g) * 0.2}
    return {k: v.to(dtype) for k, v in p.items()}


def _cameras(B: int, dtype):
    import torch
    from train_helpers import make_scene

    views = make_scene(n_views=B, n_gauss=10, test_every=0).train_views
    return (torch.stack([v.viewmat for v in views]).to(dtype), torch.stack([v.K for v in views]).to(dtype),
            views[0].width, views[0].height)


def case_step(comm, out, dtype_name: str, batch: str):
    """One step on the same Gaussians and cameras: rendered images, every Gaussian's gradient and the
    densification statistics, gathered on rank 0."""
    import torch

    from gsplat_kit.train.distributed import camera_owners, render_batch, shard_of
    from gsplat_kit.train.strategy import DefaultStrategy

    dtype = getattr(torch, dtype_name)
    B = int(batch)
    full = _gaussians(400, dtype)
    shard = {k: torch.nn.Parameter(shard_of(v, comm).clone()) for k, v in full.items()}
    viewmats, Ks, W, H = _cameras(B, dtype)
    owners = camera_owners(B, comm.world)
    bgs = torch.rand(B, 3, generator=torch.Generator().manual_seed(1)).to(dtype)
    rgb, alpha, info = render_batch(shard, viewmats, Ks, W, H, owners, 3, comm, bgs)
    info["means2d"].retain_grad()
    target = torch.rand(B, H, W, 3, generator=torch.Generator().manual_seed(2)).to(dtype)
    mine = [b for b in range(B) if owners[b] == comm.rank]
    loss = ((rgb - target[mine]) ** 2).sum() + 0.3 * alpha.sum()
    loss.backward()
    res = {"rgb": comm.gather_rows(rgb.detach()), "alpha": comm.gather_rows(alpha.detach())}
    for k, v in shard.items():
        res["grad_" + k] = comm.gather_rows(v.grad)
    if dtype == torch.float32:   # the strategy keeps its statistics in float32
        strat = DefaultStrategy()
        state = strat.initialize_state(1.0)
        strat._accumulate(shard, state, info)
        for k in ("grad2d", "count", "radii"):
            res["stat_" + k] = comm.gather_rows(state[k])
    if comm.rank == 0:
        torch.save(res, os.path.join(out, f"step_{dtype_name}_w{comm.world}.pt"))


def case_densify(comm, out):
    """Adaptive density control and MCMC growth on shards of the same Gaussians with the same statistics."""
    import torch

    from gsplat_kit.train.dist_strategy import ShardedStrategy
    from gsplat_kit.train.distributed import shard_of
    from gsplat_kit.train.strategy import DefaultStrategy, MCMCStrategy

    n = 1000
    g = torch.Generator().manual_seed(5)
    full = _gaussians(n, torch.float32, seed=3)
    full["scales"] = torch.log(torch.rand(n, 3, generator=g) * 0.05)
    full["opacities"] = torch.logit(torch.rand(n, generator=g).clamp(0.001, 0.99))
    stats = {"grad2d": torch.rand(n, generator=g) * 0.0006, "count": torch.randint(1, 5, (n,), generator=g).float(),
             "radii": torch.rand(n, generator=g) * 0.2}
    counts = {}
    for name, strat in (("default", DefaultStrategy(refine_start_iter=0, refine_every=10, reset_every=10_000)),
                        ("mcmc", MCMCStrategy(refine_start_iter=0, refine_every=10, cap_max=1030))):
        params = {k: torch.nn.Parameter(shard_of(v, comm).clone()) for k, v in full.items()}
        opts = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
        sharded = ShardedStrategy(strat, comm)
        state = sharded.initialize_state(scene_scale=1.0)
        if name == "default":
            state.update({k: shard_of(v, comm).clone() for k, v in stats.items()})
            # _accumulate is skipped: the statistics are given; grow and prune as step_post_backward would
            cloned, split = strat._grow(params, opts, state)
            strat._prune(params, opts, state, step=20_000)
        else:
            sharded._mcmc_post_backward(params, opts, state, step=10, lr=0.0)
        counts[name] = sum(comm.sizes(len(params["means"])))
    if comm.rank == 0:
        torch.save(counts, os.path.join(out, f"densify_w{comm.world}.pt"))


def case_rebalance(comm, out):
    """Unbalanced shards with Adam moments that encode their row's identity; after rebalance every row's
    moments and statistics still belong to it and the global order is kept."""
    import torch

    from gsplat_kit.train.distributed import rebalance

    n_mine = 30 if comm.rank == 0 else 10
    base = 0 if comm.rank == 0 else 30
    ids = torch.arange(base, base + n_mine, dtype=torch.float32)
    params = {k: torch.nn.Parameter(ids.reshape(-1, *([1] * len(shape))).expand(-1, *shape).clone())
              for k, shape in (("means", (3,)), ("scales", (3,)), ("quats", (4,)), ("opacities", ()),
                               ("sh0", (1, 3)), ("shN", (3, 3)))}
    opts = {k: torch.optim.Adam([p], lr=0.0) for k, p in params.items()}
    for k, p in params.items():
        p.grad = torch.ones_like(p)
        opts[k].step()
        opts[k].state[p]["exp_avg"] = p.detach() * 10.0           # identity of the row, in the moments
        opts[k].state[p]["exp_avg_sq"] = p.detach() * 100.0
    state = {"grad2d": ids * 1000.0, "count": ids.clone(), "radii": ids.clone(), "scene_scale": 1.0}
    sizes = rebalance(params, opts, state, comm, tol=0.1)
    moved = sizes != [30, 10]
    ok = all(torch.equal(opts[k].state[params[k]]["exp_avg"], params[k].detach() * 10.0)
             and torch.equal(opts[k].state[params[k]]["exp_avg_sq"], params[k].detach() * 100.0)
             and opts[k].param_groups[0]["params"][0] is params[k] for k in params)
    ok &= torch.equal(state["grad2d"], params["opacities"].detach() * 1000.0)
    res = {"moved": moved, "sizes": sizes, "ok": comm.all_sum(torch.tensor([int(ok)]))[0].item(),
           "order": comm.gather_rows(params["opacities"].detach())}
    if comm.rank == 0:
        torch.save(res, os.path.join(out, f"rebalance_w{comm.world}.pt"))


def _train_cfg(out, steps, **kw):
    from gsplat_kit.train.config import TrainConfig

    opts = {"refine_start_iter": 4, "refine_every": 4, "reset_every": 1000}
    return TrainConfig(out=out, steps=steps, sh_degree=1, sh_degree_interval=6, ckpt_every=0, eval=False,
                       progress=False, num_threads=1, strategy_options=opts, **kw)


def case_train(comm, out, run: str, steps: str, stop: str, resume: str):
    """A short training run on the synthetic scene into OUT/RUN; stops after `stop` steps with a checkpoint
    (when stop < steps), or runs to `steps` and rank 0 saves the gathered parameters."""
    import torch
    from train_helpers import make_scene

    from gsplat_kit.train.distributed import DistConfig, DistributedTrainer

    out = os.path.join(out, run)
    os.makedirs(out, exist_ok=True)
    cfg = _train_cfg(out, int(steps), resume="auto" if resume == "1" else None)
    tr = DistributedTrainer(cfg, DistConfig(batch_size=2, timeout_s=30), comm, torch.device("cpu"),
                            scene=make_scene(n_views=10, n_gauss=300))
    tr.train_steps(until=int(stop))
    if int(stop) < int(steps):
        tr.save_checkpoint()
        return
    splats = tr.gathered_splats()
    # a rank loads only the images of the camera slots it renders
    mine = {i for j in tr.mine for i in tr.sampler.slots[j]}
    loaded = comm.all_gather(torch.tensor([len(tr._images), int(set(tr._images) <= mine)])).tolist()
    if comm.rank == 0:
        torch.save({"splats": splats, "sizes": tr.strategy.sizes, "step": tr.step, "loaded": loaded,
                    "num_train_views": len(tr.scene.train_views)},
                   os.path.join(out, "final.pt"))


def case_hang(comm, out):
    """Trains until killed; writes OUT/started once the first step is done."""
    import torch
    from train_helpers import make_scene

    from gsplat_kit.train.distributed import DistConfig, DistributedTrainer

    timeout = float(os.environ["DIST_TIMEOUT"])
    tr = DistributedTrainer(_train_cfg(out, 100_000), DistConfig(batch_size=2, timeout_s=timeout), comm,
                            torch.device("cpu"), scene=make_scene(n_views=10, n_gauss=300))
    tr.train_steps(until=1)
    open(os.path.join(out, f"started{comm.rank}"), "w").close()
    tr.train_steps()


def main(argv):
    import torch

    from gsplat_kit.train.distributed import PeerLost, init_process_group, leave

    torch.set_num_threads(1)
    out, *cases = argv
    comm, _ = init_process_group("cpu", "gloo", float(os.environ.get("DIST_TIMEOUT", "60")))
    try:
        for case in cases:
            name, *args = case.split(":")
            globals()["case_" + name](comm, out, *args)
    except PeerLost as e:
        print(f"error: {e}", file=sys.stderr)
        leave(3)   # as the CLI does (gsplat_kit/train/dist_cli.py)
    leave(0)


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    sys.exit(main(sys.argv[1:]))
