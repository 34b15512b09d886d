"""The fused attention kernel (torch.ops.gsplat_kit.attention_forward) against the pure-PyTorch reference
(gsplat_kit.edit.kernel.reference_attention), op by op: every routing / edit form, odd sizes that hit the
CPU schedule's remainders, the map store, float64, CUDA where a GPU is visible, and bad arguments."""
import pytest
import torch

from conftest import on_backend
from gsplat_kit import _backend
from gsplat_kit.edit.kernel import fused_attention, reference_attention
from gsplat_kit.edit.plan import CrossEdit, LayerPlan

H = 3


def _qkv(B, Q, K, D, Dv, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: (torch.randn(*s, generator=g, dtype=torch.float64)).to(dtype).to(device)  # noqa: E731
    return mk(B * H, Q, D), mk(B * H, K, D), mk(B * H, K, Dv)


def _edits(K, T, seed=1):
    """A word swap (1 -> 2 tokens), a refinement with a new token, re-weighting chained on both, and a
    pure re-weighting; each with a partial alpha window over the tokens."""
    g = torch.Generator().manual_seed(seed)
    alpha = (torch.rand(T, K, generator=g) > 0.3).float()
    M = torch.zeros(T, K, K)
    for t in range(T):
        M[t, 0, 0] = 1
        M[t, 1, 1] = M[t, 1, 2] = 0.5
        for w in range(2, K - 1):
            M[t, w, w + 1] = 1
    idx = torch.randint(0, K, (T, K), generator=g)
    ra = (torch.rand(T, K, generator=g) > 0.2).float()
    eq = torch.ones(T, K)
    eq[:, 2] = 2.0
    eq[:, 4] = -1.0  # negative weights are allowed
    return {
        "replace": CrossEdit(alpha=alpha, mapper=M),
        "refine": CrossEdit(alpha=alpha, refine_index=idx, refine_alpha=ra),
        "replace+reweight": CrossEdit(alpha=alpha, mapper=M, equalizer=eq),
        "refine+reweight": CrossEdit(alpha=alpha, refine_index=idx, refine_alpha=ra, equalizer=eq),
        "reweight": CrossEdit(alpha=alpha, equalizer=eq),
        "full-replace": CrossEdit(alpha=torch.ones(T, K), mapper=M),  # own maps never read
    }


def _plan(kind, B, P, edit=None, store=None):
    s0 = B - P
    plan = LayerPlan.identity(B)
    if kind == "cross":
        plan.src = [-1] * (s0 + 1) + [s0] * (P - 1)
        plan.slot = [-1] * (s0 + 1) + list(range(P - 1))
        plan.edit = edit
    elif kind == "self":
        plan.src = [-1] * (s0 + 1) + [s0] * (P - 1)
    if store is not None:
        plan.store = store
        plan.store_idx = [-1] * s0 + list(range(P))
    return plan


@pytest.fixture(params=["blas", "loops", "simt"])
def schedule(request):
    """The kernel's schedules on CPU tensors: the CPU kernel with its two products through torch's BLAS
    (the default) and through its plain loops, and the tiled CUDA kernel through the SIMT harness."""
    if request.param == "simt":
        with on_backend("simt"):
            yield request.param
        return
    _C = _backend.load()
    if request.param == "blas" and not _C.attention_cpu_blas():
        pytest.skip("this torch exports no BLAS")
    _C.attention_cpu_blas(request.param == "blas")
    yield request.param
    _C.attention_cpu_blas(True)


def test_cpu_products_use_torch_blas():
    """The fast CPU path is the one the benchmark measures: torch's wheels export sgemm_/dgemm_."""
    assert _backend.load().attention_cpu_blas()


SHAPES = [  # (B, P, Q, K, D, Dv): CFG x 2 / 3 prompts, no CFG; Q and K off the tile sizes
    (4, 2, 37, 13, 8, 8),
    (6, 3, 64, 77, 40, 40),
    (3, 3, 19, 77, 24, 20),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", list(_edits(13, 1)))
@pytest.mark.parametrize("stored", [False, True])
def test_cross_edits_match_reference(shape, name, stored, schedule):
    B, P, Q, K, D, Dv = shape
    q, k, v = _qkv(B, Q, K, D, Dv)
    edit = _edits(K, P - 1)[name]
    st_f = torch.zeros(P, Q, K) if stored else None
    st_r = torch.zeros(P, Q, K) if stored else None
    out_f = fused_attention(q, k, v, 0.3, H, _plan("cross", B, P, edit, st_f))
    out_r = reference_attention(q, k, v, 0.3, H, _plan("cross", B, P, edit, st_r))
    assert (out_f - out_r).abs().max() <= 1e-5
    if stored:  # the store is the post-edit map summed over heads
        assert (st_f - st_r).abs().max() <= 1e-5 and st_r.abs().sum() > 0
    # the edit changed the targets, and only them (the check can fail)
    plain = reference_attention(q, k, v, 0.3, H, None).view(B, H, Q, Dv)
    diff = (out_f.view(B, H, Q, Dv) - plain).abs().amax(dim=(1, 2, 3))
    assert diff[: B - P + 1].max() <= 1e-5 and diff[B - P + 1:].min() > 1e-3


@pytest.mark.parametrize("shape", SHAPES + [(4, 2, 200, 200, 16, 24)])
@pytest.mark.parametrize("kind", ["plain", "self"])
def test_plain_and_injection_match_reference(shape, kind, schedule):
    B, P, Q, K, D, Dv = shape
    if kind == "self":
        K = Q  # self-attention
    q, k, v = _qkv(B, Q, K, D, Dv, seed=2)
    st_f, st_r = torch.zeros(P, Q, K), torch.zeros(P, Q, K)
    out_f = fused_attention(q, k, v, 0.25, H, _plan(kind, B, P, store=st_f))
    out_r = reference_attention(q, k, v, 0.25, H, _plan(kind, B, P, store=st_r))
    assert (out_f - out_r).abs().max() <= 1e-5
    assert (st_f - st_r).abs().max() <= 1e-5
    if kind == "self":  # targets' maps are the source's, and the store says so
        assert torch.allclose(st_r[1:], st_r[:1].expand_as(st_r[1:]))


@pytest.mark.parametrize("name", list(_edits(13, 1)))
def test_float64_exact(name, schedule):
    q, k, v = _qkv(4, 21, 77, 16, 16, dtype=torch.float64)
    edit = _edits(77, 1)[name]
    st_f, st_r = (torch.zeros(2, 21, 77, dtype=torch.float64) for _ in range(2))
    out_f = fused_attention(q, k, v, 0.2, H, _plan("cross", 4, 2, edit, st_f))
    out_r = reference_attention(q, k, v, 0.2, H, _plan("cross", 4, 2, edit, st_r))
    assert out_f.dtype == torch.float64 and (out_f - out_r).abs().max() <= 1e-12
    assert (st_f - st_r).abs().max() <= 1e-12 and st_r.abs().sum() > 0


@pytest.mark.parametrize("scale", [3.0, 40.0])
def test_peaked_rows(scale, schedule):
    """Scores spread over hundreds (probabilities down to 0 and below float32's normal range): the
    kernel's exp and its flush of negligible terms agree with torch's softmax. The plain loops and the
    CUDA schedule sum their scores in another order than torch's matrix product, so they are held to the
    exact (float64) result instead: no further from it than torch's own float32 softmax (x 1.5)."""
    q, k, v = _qkv(4, 50, 77, 16, 16, seed=3)
    out_f = fused_attention(q, k, v, scale, H, _plan("plain", 4, 2))
    out_r = reference_attention(q, k, v, scale, H, _plan("plain", 4, 2))
    assert torch.isfinite(out_f).all()
    if schedule == "blas":
        assert (out_f - out_r).abs().max() <= 1e-5 * out_r.abs().max()
    else:
        exact = reference_attention(q.double(), k.double(), v.double(), scale, H, _plan("plain", 4, 2))
        torch_error = (out_r.double() - exact).abs().max()
        assert (out_f.double() - exact).abs().max() <= max(1e-5 * exact.abs().max(), 1.5 * torch_error)


def test_plain_layers_over_many_keys_take_sdpa(monkeypatch):
    """Nothing edited, nothing stored, K >= SDPA_MIN_KEYS: torch's SDPA computes the layer (same result)."""
    import gsplat_kit.edit.kernel as kernel

    q, k, v = _qkv(2, 40, kernel.SDPA_MIN_KEYS, 8, 8, seed=4)
    calls = []
    real = kernel.F.scaled_dot_product_attention
    monkeypatch.setattr(kernel.F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    out = fused_attention(q, k, v, 0.3, H, None)
    assert calls and (out - reference_attention(q, k, v, 0.3, H, None)).abs().max() <= 1e-5
    st = torch.zeros(1, 40, kernel.SDPA_MIN_KEYS)  # a store makes the layer the kernel's again
    plan = _plan("plain", 2, 1, store=st)
    calls.clear()
    fused_attention(q, k, v, 0.3, H, plan)
    assert not calls and st.abs().sum() > 0


def test_matches_diffusers_attn_processor():
    """With no edit, the fused processor path == diffusers' default AttnProcessor on a real Attention layer."""
    from diffusers.models.attention_processor import Attention, AttnProcessor

    from gsplat_kit.edit.controllers import LayerInfo
    from gsplat_kit.edit.processor import P2PAttnProcessor

    torch.manual_seed(0)
    for cross in (None, 24):
        attn = Attention(query_dim=40, cross_attention_dim=cross, heads=5, dim_head=8)
        x = torch.randn(4, 50, 40)
        ctx = torch.randn(4, 77, 24) if cross else None
        with torch.no_grad():
            ref = AttnProcessor()(attn, x, ctx)
            out = P2PAttnProcessor(None, LayerInfo("x", "up", cross is not None), fused=True)(attn, x, ctx)
        assert (out - ref).abs().max() <= 1e-5


def test_no_map_materialised_for_big_self_attention():
    """4096 queries x 4096 keys x 2 heads x 2 elements: a materialised map would be 256 MiB; the kernel
    holds row blocks only (checked through the result against chunks of the reference)."""
    q, k, v = _qkv(2, 4096, 4096, 8, 8, seed=5)
    q, k, v = q[:4], k[:4], v[:4]  # 2 elements x H heads is more than we need; keep 4 rows of heads
    out = _backend.load().attention_forward(q, k, v, 2, 0.3, [-1, 0], [-1, -1])
    for r in (0, 2):  # element 0 and element 1 (which reads element 0's map), head 0, some query rows
        rows = slice(1000, 1100)
        p = torch.softmax(0.3 * q[0, rows] @ k[0].T, -1)
        assert (out[r, rows] - p @ v[r]).abs().max() <= 1e-5


def test_bad_arguments():
    _C = _backend.load()
    q, k, v = _qkv(2, 8, 5, 4, 4)
    with pytest.raises(RuntimeError, match="multiple of heads"):
        _C.attention_forward(q, k, v, 4, 1.0, [-1, -1], [-1, -1])
    with pytest.raises(RuntimeError, match="itself edited"):
        _C.attention_forward(torch.cat([q, q[:H]]), torch.cat([k, k[:H]]), torch.cat([v, v[:H]]), H, 1.0, [-1, 0, 1],
                             [-1, -1, -1])
    with pytest.raises(RuntimeError, match="edit slot"):
        _C.attention_forward(q, k, v, H, 1.0, [-1, 0], [-1, 0])
    with pytest.raises(RuntimeError, match="float32 or float64"):
        _C.attention_forward(q.half(), k.half(), v.half(), H, 1.0, [-1, -1], [-1, -1])
    with pytest.raises(RuntimeError, match="shapes disagree"):
        _C.attention_forward(q, k[:, :4], v, H, 1.0, [-1, -1], [-1, -1])


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["replace", "refine+reweight", "full-replace"])
def test_cuda_matches_reference(name, kernel_backend):
    """The CUDA kernel, on the SIMT harness (CPU tensors) or on a GPU, against the reference."""
    device = kernel_backend
    B, P, Q, K, D, Dv = 6, 3, 300, 77, 40, 40
    q, k, v = _qkv(B, Q, K, D, Dv, device=device)
    edit = _edits(K, P - 1)[name]
    st_f = torch.zeros(P, Q, K, device=device)
    st_r = torch.zeros(P, Q, K, device=device)
    out_f = fused_attention(q, k, v, 0.3, H, _plan("cross", B, P, edit, st_f))
    out_r = reference_attention(q, k, v, 0.3, H, _plan("cross", B, P, _on(edit, device), st_r))
    assert (out_f - out_r).abs().max() <= 1e-4
    assert (st_f - st_r).abs().max() <= 1e-4
    q, k, v = _qkv(B, 256, 256, 16, 16, device=device, seed=3)
    out_f = fused_attention(q, k, v, 0.3, H, _plan("self", B, P))
    out_r = reference_attention(q, k, v, 0.3, H, _plan("self", B, P))
    assert (out_f - out_r).abs().max() <= 1e-4


def _on(e, device):
    f = lambda x: None if x is None else x.to(device)  # noqa: E731
    return CrossEdit(alpha=f(e.alpha), mapper=f(e.mapper), refine_index=f(e.refine_index), refine_alpha=f(e.refine_alpha),
                     equalizer=f(e.equalizer))
