"""The single-process Trainer and the DistributedTrainer share one training step (gsplat_kit.train.loop):
on one rank with a batch of one camera they sample, render, step and densify bit for bit alike."""
import pytest
import torch

from gsplat_kit.train.config import TrainConfig
from gsplat_kit.train.distributed import Comm, DistConfig, DistributedTrainer
from gsplat_kit.train.loop import TrainingDiverged
from gsplat_kit.train.trainer import Trainer
from train_helpers import make_scene

OPTIONS = {"default": dict(refine_start_iter=4, refine_every=4, reset_every=8),
           "mcmc": dict(refine_start_iter=4, refine_every=4, cap_max=400)}


@pytest.fixture(scope="module")
def scene():
    return make_scene()


def _both(scene, **kw):
    """A Trainer, then a DistributedTrainer on one rank, each made when the last is done: both seed and draw
    from the global random stream (splitting Gaussians)."""
    cfg = TrainConfig(**{**dict(out="", steps=12, ckpt_every=0, eval=False, progress=False, sh_degree_interval=4,
                                num_threads=1), **kw})
    yield Trainer(cfg, scene=scene)
    yield DistributedTrainer(cfg, DistConfig(batch_size=1), Comm(), torch.device("cpu"), scene=scene)


@pytest.mark.parametrize("strategy", ["default", "mcmc"])
def test_trainer_and_one_rank_train_alike(scene, strategy):
    trainers = []
    for tr in _both(scene, strategy=strategy, strategy_options=OPTIONS[strategy], random_background=True):
        tr.train_steps()
        trainers.append(tr)
    one, dist = trainers
    assert one.step == dist.step == 12
    assert one.num_gaussians == dist.num_gaussians != len(scene.points)    # the strategy densified, alike
    for k, p in one.splats.items():
        assert torch.equal(p, dist.splats[k]), k
        sa, sb = one.optimizers[k].state[p], dist.optimizers[k].state[dist.splats[k]]
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"]), k
        assert one.optimizers[k].param_groups[0]["lr"] == dist.optimizers[k].param_groups[0]["lr"], k
        assert p.grad is None and dist.splats[k].grad is None, k                  # zero_grad(set_to_none=True)


def test_both_report_a_diverged_loss_alike(scene):
    for tr in _both(scene):
        tr.train_steps(until=3)
        with torch.no_grad():
            tr.splats["sh0"][:] = float("nan")
        with pytest.raises(TrainingDiverged, match=r"loss became nan at step 3 \(views? .+\); the last good "
                                                   r"checkpoint is none"):
            tr.train_steps()
        assert tr.step == 3
