"""`gsplat-kit train --distributed`: the flags, and the hand-off from the train verb to the sharded
trainer (gsplat_kit.train.distributed). Kept free of heavy imports, like the verb modules."""
from __future__ import annotations

import os
import sys

PEER_LOST_EXIT = 3   # a rank died or stopped answering: distinct from bad input (2) and from a bug (1)


def add_distributed_args(p):
    g = p.add_argument_group("distributed training (launch with torchrun --nproc-per-node N ...)")
    g.add_argument("--distributed", action="store_true",
                   help="shard the Gaussians over the torch.distributed ranks that torchrun started")
    g.add_argument("--batch-size", type=int, default=None,
                   help="cameras per step, at least the number of ranks (default: one per rank); learning rates "
                   "scale with its square root")
    g.add_argument("--dist-backend", choices=["auto", "gloo", "nccl"], default="auto",
                   help="auto: NCCL on CUDA, gloo on CPU")
    g.add_argument("--dist-timeout", type=float, default=300.0,
                   help="seconds a rank waits for the others before it fails (a dead or hung rank)")


def main_distributed(cfg, args) -> int:
    """Runs this rank's part of the job; rank 0 prints the summary. Ends the process (see `leave`)."""
    from gsplat_kit.common.errors import UserError
    from gsplat_kit.train.distributed import DistConfig, PeerLost, leave, train_distributed

    if not args.distributed:
        raise UserError("--batch-size needs --distributed (and torchrun); the single-process trainer renders one "
                        "camera per step")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if cfg.viewer:
        raise UserError("--viewer follows a single-process run; it is not available with --distributed")
    if args.dist_timeout <= 0:
        raise UserError(f"--dist-timeout must be > 0, got {args.dist_timeout}")
    dcfg = DistConfig(batch_size=args.batch_size or 0, backend=args.dist_backend, timeout_s=args.dist_timeout)
    try:
        m = train_distributed(cfg, dcfg, overwrite=bool(getattr(args, "overwrite", False)))
    except PeerLost as e:
        print(f"error: {e}; resume from the last complete checkpoint with --resume", file=sys.stderr)
        leave(PEER_LOST_EXIT)
    if m is not None:
        if m.get("psnr") is not None:
            print(f"held-out PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f} over {m['num_test_views']} views; "
                  f"{m['num_gaussians']} Gaussians on {m['world_size']} ranks {m['gaussians_per_rank']}; "
                  f"{m['train_time_s']:.1f} s training")
        print(f"wrote {os.path.join(cfg.out, 'point_cloud.ply')} and {os.path.join(cfg.out, 'metrics.json')}")
    leave(0)
