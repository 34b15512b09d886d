"""The single-process Trainer and the DistributedTrainer share one training step (gsplat_kit.train.loop):
on one rank with a batch of one camera they sample, render, step and densify bit for bit alike."""
import dataclasses

import pytest
import torch

from gsplat_kit.train.config import TrainConfig
from gsplat_kit.train.distributed import Comm, DistConfig, DistributedTrainer
from gsplat_kit.train.loop import TrainingDiverged
from gsplat_kit.train.trainer import Trainer
from train_helpers import make_scene

OPTIONS = {"default": dict(refine_start_iter=4, refine_every=4, reset_every=8),
           "mcmc": dict(refine_start_iter=4, refine_every=4, cap_max=400)}


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(out="", steps=12, ckpt_every=0, eval=False, progress=False, sh_degree_interval=4,
                                 num_threads=1), **kw})


def single(scene, cfg):
    return Trainer(cfg, scene=scene)


def one_rank(scene, cfg):
    return DistributedTrainer(cfg, DistConfig(batch_size=1), Comm(), torch.device("cpu"), scene=scene)


def _trained(make, scene, cfg):
    # made and trained one after the other: both seed and draw from the global random stream (splits)
    tr = make(scene, cfg)
    tr.train_steps()
    return tr


@pytest.fixture(scope="module")
def scene():
    return make_scene()


@pytest.mark.parametrize("strategy", ["default", "mcmc"])
def test_trainer_and_one_rank_train_alike(scene, strategy):
    cfg = _cfg(strategy=strategy, strategy_options=OPTIONS[strategy], random_background=True)
    one, dist = _trained(single, scene, cfg), _trained(one_rank, scene, cfg)
    assert one.step == dist.step == 12
    assert one.num_gaussians == dist.num_gaussians != len(scene.points)    # the strategy densified, alike
    for k, p in one.splats.items():
        assert torch.equal(p, dist.splats[k]), k
        sa, sb = one.optimizers[k].state[p], dist.optimizers[k].state[dist.splats[k]]
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"]), k
        assert one.optimizers[k].param_groups[0]["lr"] == dist.optimizers[k].param_groups[0]["lr"], k
        assert p.grad is None and dist.splats[k].grad is None, k                  # zero_grad(set_to_none=True)


@pytest.mark.parametrize("make", [single, one_rank])
def test_a_diverged_loss_names_the_step_and_views(scene, make):
    tr = make(scene, _cfg())
    tr.train_steps(until=3)
    with torch.no_grad():
        tr.splats["sh0"][:] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 3 \(views? .+\); the last good "
                                               r"checkpoint is none"):
        tr.train_steps()
    assert tr.step == 3


def test_both_leave_masked_pixels_out(scene):
    views = [dataclasses.replace(v) for v in scene.train_views]
    for v in views[::2]:              # the left half of every other view does not count
        m = torch.ones(v.height, v.width)
        m[:, :v.width // 2] = 0
        v.mask_path, v.load_mask = "mask.png", (lambda m=m: m)
    masked = dataclasses.replace(scene, train_views=views)
    cfg = _cfg(steps=4)
    with_mask, without = _trained(single, masked, cfg).splats, _trained(single, scene, cfg).splats
    assert not torch.equal(with_mask["sh0"], without["sh0"])        # the mask changed what was learned
    dist = _trained(one_rank, masked, cfg).splats
    for k in with_mask:
        assert torch.equal(with_mask[k], dist[k]), k
