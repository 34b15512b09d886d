"""Plug-and-Play on a tiny Stable Diffusion (CPU, random weights)."""
import pytest
import torch

from edit_helpers import tiny_sd
from gsplat_kit.edit import inversion as inv
from gsplat_kit.edit.pnp import PlugAndPlayPipeline, PnPError, PnPInjection

STEPS = 6


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is ~40x faster than two on a loaded 2-core box
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd(seed=0, conv_out_scale=0.1)


@pytest.fixture(scope="module")
def inverted(pipe):
    x0 = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    return inv.invert(pipe, x0, "", method="ddim", num_inference_steps=STEPS, progress=False)


def _run(pipe, inverted, monkeypatch, **kw):
    """Runs PnP; returns the output, the feature layer's output as the next layer sees it (per step), and
    the routing each hooked attention layer got (per step)."""
    pp = PlugAndPlayPipeline.from_pipe(pipe, fused=kw.pop("fused", True))
    feats, routes = [], []
    nxt = pipe.unet.get_submodule("up_blocks.1.attentions.1")  # reads up_blocks.1.resnets.1's output
    h = nxt.register_forward_pre_hook(lambda m, args: feats.append(args[0].clone()))
    orig = PnPInjection.layer_plan

    def spy(self, layer, *a, **k):
        plan = orig(self, layer, *a, **k)
        routes.append((self.cur_step, layer.name, list(plan.src)))
        return plan

    monkeypatch.setattr(PnPInjection, "layer_plan", spy)
    try:
        out = pp(None, "a photo of a tiger", inversion=inverted, num_inference_steps=STEPS, output_type="latent",
                 progress=False, **kw)
    finally:
        h.remove()
    return out, feats, routes


def test_full_injection_reproduces_source_features(pipe, inverted, monkeypatch):
    out, feats, routes = _run(pipe, inverted, monkeypatch, pnp_f_t=1.0, pnp_attn_t=1.0)
    assert len(feats) == STEPS
    for f in feats:  # translated branches (uncond, cond) carry the source's decoder features
        assert torch.equal(f[1], f[0]) and torch.equal(f[2], f[0])
    injected = {n for _, n, src in routes if src == [-1, 0, 0]}
    expected = [n for n in pipe.unet.attn_processors if n.startswith("up_blocks.") and ".attn1." in n][1:]
    assert injected == set(expected)
    for step, name, src in routes:
        assert src == ([-1, 0, 0] if name in expected else [-1, -1, -1]), (step, name, src)
    assert {s for s, _, _ in routes} == set(range(STEPS))

    # without injection the branches differ (the check above can fail)
    _, feats0, routes0 = _run(pipe, inverted, monkeypatch, pnp_f_t=0.0, pnp_attn_t=0.0)
    assert not torch.allclose(feats0[-1][2], feats0[-1][0], atol=1e-3)
    assert all(src == [-1, -1, -1] for _, _, src in routes0)


def test_step_windows(pipe, inverted, monkeypatch):
    _, feats, routes = _run(pipe, inverted, monkeypatch, pnp_f_t=0.5, pnp_attn_t=0.34)
    n_feat, n_attn = int(STEPS * 0.5), int(STEPS * 0.34)
    for i, f in enumerate(feats):
        assert torch.equal(f[2], f[0]) == (i < n_feat), i
    for step, _, src in routes:
        assert (src == [-1, 0, 0]) <= (step < n_attn)
    assert any(src == [-1, 0, 0] for s, _, src in routes if s == n_attn - 1)


def test_fused_matches_reference(pipe, inverted, monkeypatch):
    fused, _, _ = _run(pipe, inverted, monkeypatch, fused=True)
    ref, _, _ = _run(pipe, inverted, monkeypatch, fused=False)
    assert (fused.latents - ref.latents).abs().max() < 1e-4


def test_finer_inversion_feeds_the_source_branch(pipe):
    """An inversion with twice the steps (pnp-diffusers inverts with 1000): the source branch of sampling
    step i is the inversion latent at that step's timestep, every other one of the finer trajectory."""
    x0 = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    fine = inv.invert(pipe, x0, "", method="ddim", num_inference_steps=2 * STEPS, progress=False)
    seen = []
    h = pipe.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0][:1].clone()))
    try:
        PlugAndPlayPipeline.from_pipe(pipe)(None, "a tiger", inversion=fine, num_inference_steps=STEPS,
                                            output_type="latent", progress=False)
    finally:
        h.remove()
    assert len(seen) == STEPS
    for i, src in enumerate(seen):  # fine.trajectory[k]: k fine steps from x_0; sampling step i sits 2 (STEPS - i) - 1 up
        assert torch.equal(src, fine.trajectory[2 * (STEPS - i) - 1]), i
    assert not torch.equal(seen[0], fine.trajectory[-1])  # x_T itself lies beyond the first sampling timestep


def test_images_and_errors(pipe, inverted):
    pp = PlugAndPlayPipeline.from_pipe(pipe)
    out = pp(None, "a tiger", inversion=inverted, num_inference_steps=STEPS, output_type="np", progress=False)
    assert out.images.shape == (1, 32, 32, 3) and 0 <= out.images.min() and out.images.max() <= 1
    with pytest.raises(PnPError, match="not in the UNet"):
        pp(None, "a tiger", inversion=inverted, num_inference_steps=STEPS, feature_layers=("up_blocks.7.resnets.0",))
    with pytest.raises(PnPError, match="self-attention"):
        pp(None, "a tiger", inversion=inverted, num_inference_steps=STEPS,
           attn_layers=["up_blocks.1.attentions.0.transformer_blocks.0.attn2"])
    with pytest.raises(PnPError, match="6 steps"):
        pp(None, "a tiger", inversion=inverted, num_inference_steps=4)
    with pytest.raises(PnPError, match="pnp_f_t"):
        pp(None, "a tiger", inversion=inverted, num_inference_steps=STEPS, pnp_f_t=1.5)
