"""The native rasteriser against the pure-PyTorch reference: values (float32, 1e-5) and gradients
(float64 gradcheck and autograd through the reference; float32 relative error on thousands of
Gaussians), for every render mode, SH degree, rasterize mode, batch size and edge case."""
import math

import pytest
import torch

from gsplat_kit import rasterization
from gsplat_kit.render.reference import rasterization_reference

RENDER_MODES = ["RGB", "D", "ED", "RGB+D", "RGB+ED"]


def make_cameras(C, W, H, dtype, focal=None):
    """C cameras on a small arc looking at the origin from z = -3 (OpenCV convention)."""
    views = []
    for c in range(C):
        a = 0.25 * (c - (C - 1) / 2)
        R = torch.tensor([[math.cos(a), 0, -math.sin(a)], [0, 1, 0], [math.sin(a), 0, math.cos(a)]], dtype=dtype)
        v = torch.eye(4, dtype=dtype)
        v[:3, :3] = R
        v[:3, 3] = torch.tensor([0.1 * c, -0.05 * c, 3.0], dtype=dtype)
        views.append(v)
    f = focal or 0.9 * W
    K = torch.tensor([[f, 0, W / 2 + 0.3], [0, f * 1.05, H / 2 - 0.2], [0, 0, 1]], dtype=dtype)
    return torch.stack(views), K[None].repeat(C, 1, 1)


def make_scene(N, C, W, H, dtype=torch.float32, seed=0, spread=0.7, scale=(0.02, 0.12), sh_k=16):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(N, 3, generator=g, dtype=dtype) * spread
    quats = torch.randn(N, 4, generator=g, dtype=dtype)
    scales = torch.rand(N, 3, generator=g, dtype=dtype) * (scale[1] - scale[0]) + scale[0]
    opacities = torch.rand(N, generator=g, dtype=dtype) * 0.9 + 0.05
    sh = torch.randn(N, sh_k, 3, generator=g, dtype=dtype) * 0.3
    viewmats, Ks = make_cameras(C, W, H, dtype)
    return dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=sh, viewmats=viewmats, Ks=Ks,
                width=W, height=H)


def both(scene, **kw):
    return rasterization(**scene, **kw), rasterization_reference(**scene, **kw)


def assert_forward_close(out, ref, render_mode, atol=1e-5):
    """Colours and alphas within `atol`; depth channels within `atol` relative to the largest depth
    (float32 has ~1e-6 absolute resolution at depth 10, so a fixed 1e-5 would test the format)."""
    (c1, a1, m1), (c2, a2, m2) = out, ref
    assert c1.shape == c2.shape and a1.shape == a2.shape
    assert torch.equal(m1["radii"], m2["radii"])
    assert (a1 - a2).abs().max().item() <= atol
    has_depth = render_mode != "RGB"
    n_rgb = c1.shape[-1] - (1 if has_depth else 0)
    if n_rgb:
        assert (c1[..., :n_rgb] - c2[..., :n_rgb]).abs().max().item() <= atol
    if has_depth:
        scale = max(1.0, m2["depths"].abs().max().item())
        d1, d2 = c1[..., -1:], c2[..., -1:]
        if render_mode in ("ED", "RGB+ED"):
            # Expected depth divides by alpha: compare what was accumulated (depth * alpha), then the
            # division itself where the pixel is reasonably covered.
            covered = a2 > 0.2
            assert torch.allclose(d1[covered], d2[covered], rtol=1e-5, atol=atol * scale)
            d1, d2 = d1 * a1, d2 * a2
        assert (d1 - d2).abs().max().item() <= atol * scale


@pytest.mark.parametrize("render_mode", RENDER_MODES)
@pytest.mark.parametrize("sh_degree", [0, 1, 2, 3])
@pytest.mark.parametrize("rasterize_mode", ["classic", "antialiased"])
@pytest.mark.parametrize("C", [1, 3])
def test_forward_matches_reference(render_mode, sh_degree, rasterize_mode, C):
    scene = make_scene(250, C, 61, 37, seed=sh_degree + 7 * C)  # 61x37: not multiples of 16
    bg = torch.rand(C, 3) if render_mode.startswith("RGB") else None
    out, ref = both(scene, sh_degree=sh_degree, render_mode=render_mode, rasterize_mode=rasterize_mode, backgrounds=bg)
    assert out[0].shape == (C, 37, 61, {"RGB": 3, "D": 1, "ED": 1, "RGB+D": 4, "RGB+ED": 4}[render_mode])
    assert out[1].shape == (C, 37, 61, 1)
    assert (out[2]["radii"] > 0).all(-1).sum() > 100  # most splats are on screen
    assert_forward_close(out, ref, render_mode)


def test_forward_plain_colors_any_channel_count():
    scene = make_scene(200, 2, 40, 33)
    for D in (1, 2, 5, 40):
        scene["colors"] = torch.rand(200, D)
        bg = torch.rand(2, D)
        assert_forward_close(*both(scene, backgrounds=bg), "RGB")
    scene["colors"] = torch.rand(2, 200, 4)  # per-camera colours
    assert_forward_close(*both(scene), "RGB")


def test_covars_input_equals_quats_scales():
    scene = make_scene(150, 2, 48, 40)
    from gsplat_kit.render.reference import covariance_3d

    cov = covariance_3d(scene["quats"], scene["scales"])
    upper = torch.stack([cov[:, 0, 0], cov[:, 0, 1], cov[:, 0, 2], cov[:, 1, 1], cov[:, 1, 2], cov[:, 2, 2]], -1)
    c1, a1, _ = rasterization(**scene, sh_degree=2)
    c2, a2, _ = rasterization(**{**scene, "quats": None, "scales": None}, covars=upper, sh_degree=2)
    assert (c1 - c2).abs().max() < 1e-5 and (a1 - a2).abs().max() < 1e-5


def _grad_inputs(scene, with_bg, C, dtype):
    names = ["means", "quats", "scales", "opacities", "colors"]
    leaves = {k: scene[k].clone().requires_grad_() for k in names}
    bg = torch.rand(C, 3, dtype=dtype, generator=torch.Generator().manual_seed(3)).requires_grad_() if with_bg else None
    return leaves, bg


def _weighted_grads(fn, scene, leaves, bg, **kw):
    """Gradients of a fixed random weighting of both outputs."""
    c, a, _ = fn(**{**scene, **leaves}, backgrounds=bg, **kw)
    g = torch.Generator().manual_seed(11)
    w_c = torch.randn(c.shape, generator=g, dtype=c.dtype).to(c.device)
    w_a = torch.randn(a.shape, generator=g, dtype=a.dtype).to(a.device)
    loss = (c * w_c).sum() + (a * w_a).sum()
    tensors = list(leaves.values()) + ([bg] if bg is not None else [])
    return torch.autograd.grad(loss, tensors, allow_unused=True)


def assert_grads_close(g1, g2, names, rel=None, rtol=None, atol=None):
    """Gradient lists equal up to `rel` (relative norm error) or allclose(rtol, atol); a None (an input
    the output does not depend on) must face None or zeros."""
    for name, a, b in zip(names, g1, g2):
        if a is None or b is None:
            assert a is None or not a.any(), name
            assert b is None or not b.any(), name
            continue
        a, b = a.cpu(), b.cpu()
        assert torch.isfinite(a).all(), name
        if rel is not None:
            err = ((a - b).norm() / b.norm().clamp_min(1e-12)).item()
            assert err < rel, f"{name}: relative error {err:.2e}"
        else:
            assert torch.allclose(a, b, rtol=rtol, atol=atol), f"{name}: max diff {(a - b).abs().max().item()}"


@pytest.mark.parametrize("render_mode", RENDER_MODES)
@pytest.mark.parametrize("rasterize_mode", ["classic", "antialiased"])
@pytest.mark.parametrize("C", [1, 3])
def test_gradcheck_float64(render_mode, rasterize_mode, C):
    dtype = torch.float64
    sh_degree = {1: 3, 3: 1}[C]
    scene = make_scene(10, C, 21, 17, dtype=dtype, seed=C, spread=0.4, scale=(0.06, 0.2))
    with_bg = render_mode.startswith("RGB")
    leaves, bg = _grad_inputs(scene, with_bg, C, dtype)
    names = list(leaves)

    def f(*xs):
        kw = dict(zip(names, xs[: len(names)]))
        c, a, _ = rasterization(**{**scene, **kw}, sh_degree=sh_degree, render_mode=render_mode,
                                rasterize_mode=rasterize_mode, backgrounds=xs[-1] if with_bg else None)
        return c, a

    inputs = list(leaves.values()) + ([bg] if with_bg else [])
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("render_mode", RENDER_MODES)
@pytest.mark.parametrize("sh_degree", [0, 1, 2, 3])
@pytest.mark.parametrize("rasterize_mode", ["classic", "antialiased"])
def test_gradients_match_reference_float64(render_mode, sh_degree, rasterize_mode):
    dtype = torch.float64
    C = 3 if sh_degree % 2 else 1
    scene = make_scene(40, C, 37, 29, dtype=dtype, seed=sh_degree)
    leaves, bg = _grad_inputs(scene, render_mode.startswith("RGB"), C, dtype)
    kw = dict(sh_degree=sh_degree, render_mode=render_mode, rasterize_mode=rasterize_mode)
    g1 = _weighted_grads(rasterization, scene, leaves, bg, **kw)
    g2 = _weighted_grads(rasterization_reference, scene, leaves, bg, **kw)
    for name, a, b in zip(list(leaves) + ["backgrounds"], g1, g2):
        if a is None or b is None:  # e.g. colours in a depth-only render: unused by both
            assert a is None or not a.any(), name
            assert b is None or not b.any(), name
            continue
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-10), f"{name}: max diff {(a - b).abs().max().item()}"


@pytest.mark.parametrize("render_mode", ["RGB", "RGB+ED"])
def test_gradients_float32_thousands_of_gaussians(render_mode):
    scene = make_scene(3000, 2, 96, 72, seed=5, spread=0.8, scale=(0.01, 0.06))
    leaves, bg = _grad_inputs(scene, True, 2, torch.float32)
    kw = dict(sh_degree=3, render_mode=render_mode)
    g1 = _weighted_grads(rasterization, scene, leaves, bg, **kw)
    g2 = _weighted_grads(rasterization_reference, scene, leaves, bg, **kw)
    for name, a, b in zip(list(leaves) + ["backgrounds"], g1, g2):
        rel = ((a - b).norm() / b.norm()).item()
        assert rel < 1e-4, f"{name}: relative error {rel:.2e}"


def edge_case_scene(dtype=torch.float32, only=None):
    """One scene holding every awkward kind of Gaussian at once (or only the named kinds)."""
    W, H = 70, 45
    viewmats, Ks = make_cameras(2, W, H, dtype)
    parts = []

    def add(means, scales, opac, quats=None, kind=""):
        if only is not None and kind not in only:
            return
        n = means.shape[0]
        q = quats if quats is not None else torch.randn(n, 4, generator=torch.Generator().manual_seed(n), dtype=dtype)
        parts.append((means.to(dtype), q, scales.to(dtype), opac.to(dtype)))

    g = torch.Generator().manual_seed(0)
    add(torch.tensor([[0.0, 0.0, -5.0], [0.3, 0.2, -3.5]]), torch.full((2, 3), 0.2), torch.tensor([0.9, 0.9]), kind="behind")   # behind the camera
    add(torch.tensor([[0.05, 0.0, -2.985], [-0.1, 0.05, -2.95]]), torch.tensor([[0.3, 0.3, 0.3], [0.1, 0.2, 0.5]]),
        torch.tensor([0.5, 0.6]), kind="near")                                                                                  # straddling the near plane
    add(torch.tensor([[40.0, 0.0, 0.0], [0.0, -30.0, 1.0]]), torch.full((2, 3), 0.1), torch.tensor([0.9, 0.9]), kind="offscreen")   # off screen
    add(torch.tensor([[30.0, 0.0, 40.0]]), torch.full((1, 3), 10.0), torch.tensor([0.3]), kind="huge")                        # huge, far behind the rest
    add(torch.randn(6, 3, generator=g) * 0.3, torch.tensor([[1e-4, 0.5, 1e-4]]).repeat(6, 1), torch.full((6,), 0.8), kind="needle")  # needle-thin
    add(torch.randn(5, 3, generator=g) * 0.3, torch.full((5, 3), 0.1), torch.zeros(5), kind="transparent")                           # fully transparent
    add(torch.tensor([[0.2, 0.1, 0.0]]).repeat(300, 1) + torch.randn(300, 3, generator=g) * 0.01,
        torch.full((300, 3), 0.05), torch.full((300,), 0.7), kind="pile")                                                      # many overlapping in one tile
    add(torch.randn(40, 3, generator=g) * 0.2 + torch.tensor([-0.55, -0.35, 0.0]), torch.full((40, 3), 0.02),
        torch.rand(40, generator=g), kind="corner")                                                                               # a corner; the rest is empty tiles
    means, quats, scales, opac = (torch.cat(x) for x in zip(*parts))
    N = means.shape[0]
    colors = torch.rand(N, 3, generator=g, dtype=dtype)
    return dict(means=means, quats=quats, scales=scales, opacities=opac, colors=colors, viewmats=viewmats, Ks=Ks,
                width=W, height=H)


@pytest.mark.parametrize("render_mode", RENDER_MODES)
def test_edge_cases_forward_and_gradients(render_mode):
    scene = edge_case_scene()
    out, ref = both(scene, render_mode=render_mode)
    assert_forward_close(out, ref, render_mode)
    radii = out[2]["radii"]
    assert (radii[:, :2] == 0).all(), "Gaussians behind the camera must be culled"
    assert (radii[:, 4:6] == 0).all(), "off-screen Gaussians must be culled"
    sparse_scene = edge_case_scene(only=("corner", "behind", "offscreen", "transparent"))
    sparse = rasterization(**sparse_scene, render_mode=render_mode)
    offsets = sparse[2]["isect_offsets"].flatten().long()
    ends = torch.cat([offsets[1:], torch.tensor([sparse[2]["flatten_ids"].numel()])])
    assert (ends == offsets).float().mean() >= 0.3, "many tiles must hold no splat at all"
    assert_forward_close(sparse, rasterization_reference(**sparse_scene, render_mode=render_mode), render_mode)
    assert out[1].max() > 0.99, "the overlapping pile must saturate its pixels"
    scene64 = {k: (v.double() if torch.is_tensor(v) else v) for k, v in edge_case_scene(torch.float64).items()}
    leaves = {k: scene64[k].clone().requires_grad_() for k in ["means", "quats", "scales", "opacities", "colors"]}
    g1 = _weighted_grads(rasterization, scene64, leaves, None, render_mode=render_mode)
    g2 = _weighted_grads(rasterization_reference, scene64, leaves, None, render_mode=render_mode)
    for name, a, b in zip(leaves, g1, g2):
        a = torch.zeros_like(leaves[name]) if a is None else a
        b = torch.zeros_like(leaves[name]) if b is None else b
        assert torch.isfinite(a).all(), name
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-9), f"{name}: max diff {(a - b).abs().max().item()}"


def test_means2d_grad_and_absgrad_for_densification():
    scene = make_scene(300, 2, 64, 48)
    leaves = {k: scene[k].clone().requires_grad_() for k in ["means", "opacities"]}
    c, a, meta = rasterization(**{**scene, **leaves}, sh_degree=1, absgrad=True)
    meta["means2d"].retain_grad()
    (c.square().sum() + a.sum()).backward()
    grad, absgrad = meta["means2d"].grad, meta["means2d"].absgrad
    assert grad.shape == absgrad.shape == (2, 300, 2)
    assert (absgrad >= grad.abs() - 1e-6).all()  # |sum| <= sum of |.|
    visible = (meta["radii"] > 0).all(-1)
    assert (grad[~visible] == 0).all() and (absgrad[visible].sum(-1) > 0).float().mean() > 0.9


def test_invalid_inputs_raise_value_errors_naming_the_argument():
    s = {**make_scene(20, 1, 32, 32), "colors": torch.rand(20, 3)}
    bad = [
        (dict(means=s["means"][:, :2]), "means"),
        (dict(quats=s["quats"][:10]), "quats"),
        (dict(scales=s["scales"].double()), "scales"),
        (dict(opacities=s["opacities"][:, None]), "opacities"),
        (dict(viewmats=s["viewmats"][:, :3]), "viewmats"),
        (dict(Ks=s["Ks"].repeat(2, 1, 1)), "Ks"),
        (dict(colors=torch.rand(20, 4, 3)), "sh_degree"),
        (dict(width=0), "width"),
        (dict(means=s["means"].to("meta")), "device"),
        (dict(viewmats=torch.full_like(s["viewmats"], float("nan"))), "viewmats"),
        (dict(colors=[1, 2, 3]), "colors"),
    ]
    for override, word in bad:
        kw = {**s, **override}
        sh = 3 if word == "sh_degree" else None
        with pytest.raises(ValueError, match=word):
            rasterization(**kw, sh_degree=sh)
    with pytest.raises(ValueError, match="render_mode"):
        rasterization(**s, render_mode="RGBD")
    with pytest.raises(ValueError, match="rasterize_mode"):
        rasterization(**s, rasterize_mode="mip")
    with pytest.raises(ValueError, match="backgrounds"):
        rasterization(**{**s, "colors": torch.rand(20, 3)}, backgrounds=torch.rand(1, 4))


def test_stale_build_is_reported(monkeypatch):
    from gsplat_kit import _backend

    _backend.load.cache_clear()
    monkeypatch.setattr(_backend, "_sources_hash", lambda: "not-the-built-hash")
    try:
        with pytest.raises(_backend.NativeBuildError, match="make build"):
            _backend.load()
    finally:
        _backend.load.cache_clear()


@pytest.mark.parametrize("tile_size", [8, 16, 32])
def test_tile_sizes_match_reference(tile_size):
    scene = make_scene(200, 2, 70, 45, seed=4)
    c, a, meta = rasterization(**scene, sh_degree=2, tile_size=tile_size)
    assert meta["tile_width"] == -(-70 // tile_size) and meta["isect_offsets"].shape == (2, -(-45 // tile_size), -(-70 // tile_size))
    assert_forward_close((c, a, meta), rasterization_reference(**scene, sh_degree=2, tile_size=tile_size), "RGB")


@pytest.mark.parametrize("tile_size", [0, 4, 12, 24, 64, 16.0])
def test_unsupported_tile_sizes_raise(tile_size):
    with pytest.raises(ValueError, match="tile_size must be 8, 16 or 32"):
        rasterization(**make_scene(10, 1, 32, 32), sh_degree=0, tile_size=tile_size)


def test_torch_compile_training_step_gives_the_same_loss():
    """The ops' abstract implementations (gsplat_kit/_backend.py) let torch.compile trace a training step
    through the autograd Functions, the data-dependent binning included."""
    from gsplat_kit.train.losses import photometric_loss

    scene = make_scene(60, 1, 32, 24, seed=7)
    target = torch.rand(1, 24, 32, 3, generator=torch.Generator().manual_seed(0))

    def step(means, opacities, colors):
        c, _, _ = rasterization(**{**scene, "means": means, "opacities": opacities, "colors": colors}, sh_degree=1)
        loss = photometric_loss(c, target)[0]
        loss.backward()
        return loss.detach()

    def leaves():
        return [scene[k].clone().requires_grad_() for k in ("means", "opacities", "colors")]

    eager_in, compiled_in = leaves(), leaves()
    torch._dynamo.reset()
    compiled = torch.compile(step, backend="aot_eager")
    l1, l2 = step(*eager_in), compiled(*compiled_in)
    assert torch.allclose(l1, l2, rtol=1e-6, atol=1e-7)
    for a, b in zip(eager_in, compiled_in):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7)


# ---- CUDA kernels: on the SIMT harness (CPU, every run) and on a GPU (wherever one is visible) --------

def _to(scene, device):
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in scene.items()}


def _cpu(out):
    c, a, meta = out
    return c.cpu(), a.cpu(), {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in meta.items()}


@pytest.mark.cuda
@pytest.mark.parametrize("render_mode", RENDER_MODES)
@pytest.mark.parametrize("rasterize_mode", ["classic", "antialiased"])
@pytest.mark.parametrize("C", [1, 3])
def test_cuda_matches_cpu(render_mode, rasterize_mode, C, kernel_backend):
    device = kernel_backend
    # The harness runs a GPU's threads one fiber at a time: a smaller scene, with as many splats per tile.
    scene = make_scene(2000, C, 123, 77, seed=C) if device == "cuda" else make_scene(300, C, 45, 37, seed=C, spread=0.45)
    kw = dict(sh_degree=3, render_mode=render_mode, rasterize_mode=rasterize_mode)
    from gsplat_kit import _backend

    with _backend.use_ops(_backend.NAMESPACE):  # the CPU kernels, whichever backend the fixture selected
        cpu = rasterization(**scene, **kw)
        leaves, bg = _grad_inputs(scene, render_mode.startswith("RGB"), C, torch.float32)
        g_cpu = _weighted_grads(rasterization, scene, leaves, bg, **kw)
    gpu = rasterization(**_to(scene, device), **kw)
    assert_forward_close(_cpu(gpu), cpu, render_mode)
    leaves_gpu = {k: v.detach().to(device).requires_grad_() for k, v in leaves.items()}
    bg_gpu = None if bg is None else bg.detach().to(device).requires_grad_()
    g_gpu = _weighted_grads(rasterization, _to(scene, device), leaves_gpu, bg_gpu, **kw)
    assert_grads_close(g_gpu, g_cpu, list(leaves) + ["backgrounds"], rel=1e-4)


@pytest.mark.cuda
def test_cuda_gradcheck_float64(kernel_backend):
    scene = _to(make_scene(10, 2, 21, 17, dtype=torch.float64, seed=2, spread=0.4, scale=(0.06, 0.2)), kernel_backend)
    names = ["means", "quats", "scales", "opacities", "colors"]

    def f(*xs):
        c, a, _ = rasterization(**{**scene, **dict(zip(names, xs))}, sh_degree=2, render_mode="RGB+ED")
        return c, a

    # Through the harness, fast mode (random projections of the Jacobian): the full one is minutes there.
    assert torch.autograd.gradcheck(f, [scene[k].clone().requires_grad_() for k in names], eps=1e-6, atol=1e-6, rtol=1e-5,
                                    fast_mode=kernel_backend == "cpu")
