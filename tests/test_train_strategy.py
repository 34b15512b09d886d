"""Adaptive density control and MCMC: the Gaussians they add, split and remove, and the Adam state rows."""
import math

import pytest
import torch

from gsplat_kit.train import ops
from gsplat_kit.train.strategy import DefaultStrategy, MCMCStrategy, make_strategy

W, H = 200, 100


def _splats(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = {
        "means": torch.randn(n, 3, generator=g),
        "scales": torch.full((n, 3), math.log(0.005)),
        "quats": torch.randn(n, 4, generator=g),
        "opacities": torch.full((n,), 2.0),
        "sh0": torch.randn(n, 1, 3, generator=g),
        "shN": torch.randn(n, 15, 3, generator=g),
    }
    return {k: torch.nn.Parameter(v) for k, v in p.items()}


def _optimizers(params):
    opts = {k: torch.optim.Adam([p], lr=1e-3, eps=1e-15) for k, p in params.items()}
    # give every row a recognisable Adam state: row i holds i + 1
    for k, p in params.items():
        p.grad = torch.ones_like(p)
        opts[k].step()
        st = opts[k].state[p]
        rows = torch.arange(1, len(p) + 1, dtype=p.dtype).view(-1, *[1] * (p.dim() - 1))
        st["exp_avg"].copy_(rows.expand_as(p))
        st["exp_avg_sq"].copy_(rows.expand_as(p) * 10)
        p.grad = None
    return opts


def _info(n, pixel_grads, radii=5):
    """A fake rasterizer meta for one camera whose 2D-mean gradient, normalised like gsplat, is pixel_grads."""
    means2d = torch.zeros(1, n, 2, requires_grad=True)
    g = torch.zeros(1, n, 2)
    g[0, :, 0] = torch.as_tensor(pixel_grads) / (W / 2.0)   # undo grad * W/2 * n_cameras
    means2d.grad = g
    r = torch.full((1, n, 2), radii, dtype=torch.int32)
    return {"means2d": means2d, "radii": r, "width": W, "height": H, "n_cameras": 1}


def test_clone_split_prune_and_optimizer_rows():
    params = _splats(4)
    params["scales"].data[1] = math.log(0.5)            # large in the world (scene_scale 1: > 0.01)
    params["opacities"].data[2] = math.log(0.001 / 0.999)  # transparent -> pruned
    opts = _optimizers(params)
    old = {k: v.detach().clone() for k, v in params.items()}
    strat = DefaultStrategy(refine_start_iter=500, refine_every=100, reset_every=3000)
    state = strat.initialize_state(scene_scale=1.0)
    # 0: high grad + small -> clone; 1: high grad + large -> split; 2: low opacity -> prune; 3: low grad -> kept
    stats = strat.step_post_backward(params, opts, state, 600, _info(4, [0.001, 0.001, 0.0, 0.00001]))
    assert stats["cloned"] == 1 and stats["split"] == 1 and stats["pruned"] == 1
    # order after the ops: kept [0, 3], clone of 0, then the two halves of 1
    n = len(params["means"])
    assert n == 5
    assert torch.equal(params["means"][0], old["means"][0]) and torch.equal(params["means"][1], old["means"][3])
    assert torch.equal(params["means"][2], old["means"][0])                       # the clone is identical
    for k in ("sh0", "shN", "quats", "opacities"):
        assert torch.equal(params[k][2], old[k][0])
    half_scale = torch.log(torch.exp(old["scales"][1]) / 1.6)
    for i in (3, 4):
        assert torch.allclose(params["scales"][i], half_scale)
        assert not torch.equal(params["means"][i], old["means"][1])               # resampled inside the parent
        assert (params["means"][i] - old["means"][1]).norm() < 0.5 * 6            # within a few sigmas
        assert torch.equal(params["sh0"][i], old["sh0"][1])
    assert torch.all(torch.sigmoid(params["opacities"]) > 0.005)                  # the transparent one is gone
    # every optimizer holds the new parameter, with rows that follow: old rows keep their moments, new rows are zero
    for k, p in params.items():
        st = opts[k].state[p]
        assert opts[k].param_groups[0]["params"][0] is p
        ea = st["exp_avg"].reshape(n, -1)[:, 0]
        assert ea.tolist() == [1.0, 4.0, 0.0, 0.0, 0.0], k
        assert st["exp_avg_sq"].reshape(n, -1)[:, 0].tolist() == [10.0, 40.0, 0.0, 0.0, 0.0]
    # the running statistics were reset and resized
    assert state["grad2d"].shape == (5,) and float(state["grad2d"].sum()) == 0.0


def test_gradient_threshold_and_refine_schedule():
    params = _splats(3)
    opts = _optimizers(params)
    strat = DefaultStrategy()
    state = strat.initialize_state(1.0)
    # just below 0.0002 averaged over two views: nothing grows
    for step in (598, 599):
        strat.step_post_backward(params, opts, state, step, _info(3, [0.00019, 0.0, 0.0]))
    strat.step_post_backward(params, opts, state, 600, _info(3, [0.00019, 0.0, 0.0]))
    assert len(params["means"]) == 3
    # before refine_start_iter, even a huge gradient does nothing
    state = strat.initialize_state(1.0)
    strat.step_post_backward(params, opts, state, 500, _info(3, [1.0, 1.0, 1.0]))
    assert len(params["means"]) == 3
    # a Gaussian outside the view (radius 0) accumulates nothing
    state = strat.initialize_state(1.0)
    strat.step_post_backward(params, opts, state, 700, _info(3, [1.0, 1.0, 1.0], radii=0))
    assert len(params["means"]) == 3
    # ... and the same gradient on a visible one does grow
    strat.step_post_backward(params, opts, state, 800, _info(3, [1.0, 0.0, 0.0]))
    assert len(params["means"]) == 4


def test_opacity_reset_and_size_prune():
    params = _splats(3)
    params["scales"].data[0] = math.log(0.5)     # > 0.1 * scene_scale after the first reset -> pruned
    opts = _optimizers(params)
    strat = DefaultStrategy()
    state = strat.initialize_state(1.0)
    strat.step_post_backward(params, opts, state, 3000, _info(3, [0.0, 0.0, 0.0]))
    # reset: every opacity clamped to 2 * prune_opa, moments zeroed
    assert torch.allclose(torch.sigmoid(params["opacities"]), torch.full((3,), 0.01), atol=1e-6)
    assert float(opts["opacities"].state[params["opacities"]]["exp_avg"].abs().sum()) == 0.0
    params["opacities"].data[:] = 2.0
    strat.step_post_backward(params, opts, state, 3100, _info(3, [0.0, 0.0, 0.0]))
    assert len(params["means"]) == 2
    # screen size: a splat covering more than 15 % of the image is pruned
    info = _info(2, [0.0, 0.0])
    info["radii"][0, 0] = 0.2 * W
    strat.step_post_backward(params, opts, state, 3200, info)
    assert len(params["means"]) == 1


def test_mcmc_relocates_dead_and_grows_to_cap():
    params = _splats(40)
    params["opacities"].data[:10] = -10.0          # dead
    opts = _optimizers(params)
    strat = MCMCStrategy(cap_max=41, refine_start_iter=0, refine_every=1)
    state = strat.initialize_state()
    before_dead_means = params["means"][:10].detach().clone()
    stats = strat.step_post_backward(params, opts, state, 1, {}, lr=0.0)
    assert stats["relocated"] == 10 and stats["added"] == 1
    assert len(params["means"]) == 41
    assert torch.all(torch.sigmoid(params["opacities"]) >= 0.005 - 1e-6)
    assert not torch.allclose(params["means"][:10], before_dead_means)
    for k, p in params.items():
        st = opts[k].state[p]
        assert st["exp_avg"].shape == p.shape
        assert float(st["exp_avg"][:10].abs().sum()) == 0.0          # relocated rows start fresh
        assert float(st["exp_avg"][-1:].abs().sum()) == 0.0          # the added row too
    # at the cap: no more growth
    strat.step_post_backward(params, opts, state, 2, {}, lr=0.0)
    assert len(params["means"]) == 41


def test_relocation_preserves_single_copy():
    # with ratio 1 the relocation update is the identity
    opa = torch.tensor([0.3, 0.8])
    sc = torch.rand(2, 3)
    new_opa, new_sc = ops.relocation_update(opa, sc, torch.tensor([1, 1]), ops.binomial_table())
    assert torch.allclose(new_opa, opa) and torch.allclose(new_sc, sc, atol=1e-6)
    # two copies: each is more transparent, and together they reach the original opacity
    new_opa, _ = ops.relocation_update(opa, sc, torch.tensor([2, 2]), ops.binomial_table())
    assert torch.allclose(1 - (1 - new_opa) ** 2, opa, atol=1e-6)


def test_mcmc_noise_moves_only_transparent():
    params = _splats(2)
    params["opacities"].data[:] = torch.tensor([-10.0, 5.0])
    before = params["means"].detach().clone()
    ops.inject_noise(params, scaler=1e3)
    moved = (params["means"] - before).norm(dim=-1)
    assert moved[0] > 0 and moved[1] < 1e-6 * moved[0] + 1e-9


def test_make_strategy_rejects_unknown():
    with pytest.raises(ValueError, match="unknown strategy"):
        make_strategy("nope")
    assert isinstance(make_strategy("mcmc", cap_max=5), MCMCStrategy)
