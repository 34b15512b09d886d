"""Every CUDA kernel executed through the SIMT harness (csrc/simt/: the .cu files compiled as C++ and run
by CPU threads with real barriers, warps and shared memory) against the CPU kernels: values and
gradients at the tolerances of the CUDA-vs-CPU tests, and the binning itself, on the edge-case scene,
every render mode, both rasterize modes, 1 and 3 cameras, image sizes that are not multiples of the
tile, float32 and float64, 1 to 32 colour channels (33: a clear error before any launch), tile sizes
8/16/32, both parameterisations and every SH degree; the attention kernel for every edit type against
the reference. (test_render_rasterization.py::test_cuda_* and test_edit_kernel.py::test_cuda_* run on
the harness too.)"""
import pytest
import torch

from conftest import on_backend
from gsplat_kit import rasterization
from test_edit_kernel import H, _edits, _plan, _qkv
from test_render_rasterization import (
    RENDER_MODES, _grad_inputs, _weighted_grads, assert_forward_close, assert_grads_close, edge_case_scene, make_scene,
)


def simt_and_cpu(fn):
    """fn() through the harness, then on the CPU kernels."""
    with on_backend("simt"):
        a = fn()
    return a, fn()


def assert_same_binning(m1, m2):
    """Tile binning (count, emit, radix sort, tile ranges) must give the CPU's exact lists. (The keys' low
    32 bits are the depths, which differ in the last bits between builds that contract to FMAs or not.)"""
    for key in ("radii", "tiles_per_gauss", "flatten_ids", "isect_offsets"):
        assert torch.equal(m1[key], m2[key]), key
    assert torch.equal(m1["isect_ids"] >> 32, m2["isect_ids"] >> 32), "isect_ids (camera | tile)"


def render_and_grads(scene, with_bg, dtype, **kw):
    """Forward outputs and the gradients of a fixed weighting of them (as the CUDA-vs-CPU tests)."""
    C = scene["viewmats"].shape[0]
    leaves, bg = _grad_inputs(scene, with_bg, C, dtype)
    out = rasterization(**scene, backgrounds=None if bg is None else bg.detach(), **kw)
    return out, _weighted_grads(rasterization, scene, leaves, bg, **kw), list(leaves) + ["backgrounds"]


@pytest.mark.parametrize("render_mode", RENDER_MODES)
def test_edge_cases(render_mode):
    """Behind the camera, near plane, off screen, huge, needle-thin, transparent, 300 in one tile (more
    than a shared-memory batch), empty tiles: float32 values, float64 gradients."""
    (o1, _, _), (o2, _, _) = simt_and_cpu(lambda: render_and_grads(edge_case_scene(), False, torch.float32,
                                                                   render_mode=render_mode))
    assert_forward_close(o1, o2, render_mode)
    assert_same_binning(o1[2], o2[2])
    scene64 = edge_case_scene(torch.float64)
    (_, g1, names), (_, g2, _) = simt_and_cpu(lambda: render_and_grads(scene64, False, torch.float64,
                                                                       render_mode=render_mode))
    assert_grads_close(g1, g2, names, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("rasterize_mode", ["classic", "antialiased"])
@pytest.mark.parametrize("C", [1, 3])
def test_float64(rasterize_mode, C):
    scene = make_scene(150, C, 45, 37, dtype=torch.float64, seed=C)
    kw = dict(sh_degree=3, render_mode="RGB+ED", rasterize_mode=rasterize_mode)
    (o1, g1, names), (o2, g2, _) = simt_and_cpu(lambda: render_and_grads(scene, True, torch.float64, **kw))
    assert_forward_close(o1, o2, "RGB+ED", atol=1e-12)
    assert_same_binning(o1[2], o2[2])
    assert_grads_close(g1, g2, names, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("D", [1, 3, 5, 32])
def test_channel_counts(D):
    scene = make_scene(120, 2, 37, 29, seed=D)
    scene["colors"] = torch.rand(120, D, generator=torch.Generator().manual_seed(D))
    bg = torch.rand(2, D, generator=torch.Generator().manual_seed(1))

    def run():
        colors = scene["colors"].clone().requires_grad_()
        means = scene["means"].clone().requires_grad_()
        c, a, meta = rasterization(**{**scene, "colors": colors, "means": means}, backgrounds=bg)
        (c * torch.linspace(-1, 1, D)).sum().add(a.sum()).backward()
        return (c.detach(), a.detach(), meta), (colors.grad, means.grad)

    (o1, g1), (o2, g2) = simt_and_cpu(run)
    assert_forward_close(o1, o2, "RGB")
    assert_grads_close(g1, g2, ["colors", "means"], rel=1e-4)


def test_channel_count_above_the_cuda_limit_is_an_error():
    scene = make_scene(20, 1, 24, 20)
    scene["colors"] = torch.rand(20, 33)
    with on_backend("simt"), pytest.raises(RuntimeError, match="at most 32 colour channels, got 33"):
        rasterization(**scene)
    assert rasterization(**scene)[0].shape[-1] == 33  # the CPU kernels take any count


@pytest.mark.parametrize("tile_size", [8, 16, 32])
def test_tile_sizes(tile_size):
    """8x8 (64 threads), 16x16 (256) and 32x32 (1024 threads, batches of 256 splats) on the edge-case scene
    (float64: its needles and huge splats leave float32 gradients a few 1e-4 apart by summation order)."""
    scene = edge_case_scene(torch.float64)
    (o1, g1, names), (o2, g2, _) = simt_and_cpu(
        lambda: render_and_grads(scene, True, torch.float64, render_mode="RGB+D", tile_size=tile_size))
    assert o1[2]["tile_size"] == tile_size
    assert_forward_close(o1, o2, "RGB+D", atol=1e-12)
    assert_same_binning(o1[2], o2[2])
    assert_grads_close(g1, g2, names, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("sh_degree", [0, 1, 2, 3])
def test_covars_and_sh_degrees(sh_degree):
    """The projection kernels' covariance path and the SH kernels at every degree (per-camera colours at
    degree 1; at the others, coefficients shared by the cameras, whose gradients sh_bwd sums atomically)."""
    from gsplat_kit.render.reference import covariance_3d

    scene = make_scene(80, 2, 33, 31, dtype=torch.float64, seed=sh_degree)
    cov = covariance_3d(scene["quats"], scene["scales"])
    upper = torch.stack([cov[:, 0, 0], cov[:, 0, 1], cov[:, 0, 2], cov[:, 1, 1], cov[:, 1, 2], cov[:, 2, 2]], -1)
    colors = scene["colors"] if sh_degree != 1 else scene["colors"][None].repeat(2, 1, 1, 1)

    def run():
        leaves = {"means": scene["means"].clone().requires_grad_(), "covars": upper.clone().requires_grad_(),
                  "colors": colors.clone().requires_grad_()}
        c, a, _ = rasterization(**{**scene, "quats": None, "scales": None, **leaves}, sh_degree=sh_degree)
        (c.square().sum() + a.sum()).backward()
        return c.detach(), [v.grad for v in leaves.values()]

    (c1, g1), (c2, g2) = simt_and_cpu(run)
    assert (c1 - c2).abs().max() <= 1e-12
    assert_grads_close(g1, g2, ["means", "covars", "colors"], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", list(_edits(13, 1)) + ["self", "plain"])
@pytest.mark.parametrize("stored", [False, True])
def test_attention_every_edit(name, stored):
    """The tiled CUDA attention kernel (37 query rows in a block of 64; 13 keys, or 37 for "self", in one
    tile) against the reference processor."""
    from gsplat_kit.edit.kernel import fused_attention, reference_attention

    B, P, Q, K, D, Dv = 4, 2, 37, 13, 8, 12  # D != Dv: a row stride of the wrong head dim shows
    if name == "self":
        K = Q
    q, k, v = _qkv(B, Q, K, D, Dv)
    edit = _edits(K, P - 1)[name] if name in _edits(13, 1) else None
    kind = "cross" if edit is not None else name
    st_f = torch.zeros(P, Q, K) if stored else None
    st_r = torch.zeros(P, Q, K) if stored else None
    with on_backend("simt"):
        out_f = fused_attention(q, k, v, 0.3, H, _plan(kind, B, P, edit, st_f))
    out_r = reference_attention(q, k, v, 0.3, H, _plan(kind, B, P, edit, st_r))
    assert (out_f - out_r).abs().max() <= 1e-5
    if stored:
        assert (st_f - st_r).abs().max() <= 1e-5 and st_r.abs().sum() > 0


@pytest.mark.parametrize("D, Dv", [(8, 12), (40, 64), (80, 100), (256, 200)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attention_head_dims(D, Dv, dtype):
    """A query row is split over 1, 2, 4 or 8 threads by head channel (warp sums of its scores), and the key
    tiles shrink as the head dims grow (float64 at 256 + 200: 13 keys a tile, 6 tiles); each on an edit
    whose map is stored."""
    from gsplat_kit.edit.kernel import fused_attention, reference_attention

    B, P, Q, K = 4, 2, 9, 77
    q, k, v = _qkv(B, Q, K, D, Dv, dtype=dtype, seed=D)
    edit = _edits(K, P - 1)["replace+reweight"]
    st_f, st_r = (torch.zeros(P, Q, K, dtype=dtype) for _ in range(2))
    with on_backend("simt"):
        out_f = fused_attention(q, k, v, 0.1, H, _plan("cross", B, P, edit, st_f))
    out_r = reference_attention(q, k, v, 0.1, H, _plan("cross", B, P, edit, st_r))
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert (out_f - out_r).abs().max() <= tol
    assert (st_f - st_r).abs().max() <= tol and st_r.abs().sum() > 0


def test_attention_head_dims_above_the_cuda_limit_are_errors():
    from gsplat_kit import _backend

    q, k, v = _qkv(1, 4, 5, 4, 257)
    with on_backend("simt"), pytest.raises(RuntimeError, match="value head dim 257 above the CUDA kernel's 256"):
        _backend.ops().attention_forward(q, k, v, H, 1.0, [-1], [-1])
    q, k, v = _qkv(1, 4, 5, 257, 4)
    with on_backend("simt"), pytest.raises(RuntimeError, match="query/key head dim 257 above the CUDA kernel's 256"):
        _backend.ops().attention_forward(q, k, v, H, 1.0, [-1], [-1])
