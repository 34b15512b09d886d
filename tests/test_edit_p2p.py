"""Prompt-to-Prompt controllers on a tiny Stable Diffusion (tests/edit_helpers.py): the edit semantics at
every hooked layer, LocalBlend, self-map injection windows, fused kernel == reference, and bad input."""
import pytest
import torch

from edit_helpers import tiny_sd
from gsplat_kit.edit import (AttentionRefine, AttentionReplace, AttentionReweight, AttentionStore, Prompt2PromptPipeline,
                             UnsupportedModelError, get_equalizer)
from gsplat_kit.edit.controllers import LayerInfo
from gsplat_kit.edit.plan import CrossEdit, LayerPlan
from gsplat_kit.edit.processor import P2PAttnProcessor
from gsplat_kit.edit.kernel import fused_attention, reference_attention
from gsplat_kit.edit.tokens import refinement_mapper, replacement_mapper, word_token_indices

SRC = "a cat on the table"
DST = "a dog on the table"


@pytest.fixture(scope="module")
def sd():
    return tiny_sd(seed=0)


@pytest.fixture(scope="module")
def pipe(sd):
    p = Prompt2PromptPipeline.from_pipe(sd)
    p.set_progress_bar_config(disable=True)
    return p


def latents(seed=0):
    return torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(seed))


def cross_layers(unet):
    return [(n, unet.get_submodule(n[: -len(".processor")])) for n in unet.attn_processors if n.endswith("attn2.processor")]


# ---- tokens ----------------------------------------------------------------------------------------------

def test_word_indices_and_mappers(sd):
    tok = sd.tokenizer
    assert word_token_indices("a zebra on the table", "zebra", tok) == [2, 3, 4, 5, 6]  # unknown word: one token per letter
    assert word_token_indices(SRC, "cat", tok) == [2]
    M = replacement_mapper(SRC, DST, tok)
    assert M[2, 2] == 1 and M[3, 3] == 1 and M.sum() == 77
    # a word that becomes n tokens gives 1/n per token; later tokens shift
    M2 = replacement_mapper(SRC, "a zebra on the table", tok)
    assert torch.allclose(M2[2, 2:7], torch.full((5,), 0.2)) and M2[3, 7] == 1 and M2[4, 8] == 1
    idx, alpha = refinement_mapper(SRC, "a big red cat on the table", tok)
    assert alpha[:9].tolist() == [1, 1, 0, 0, 1, 1, 1, 1, 1]  # "big", "red" are new
    assert idx[4].item() == 2 and idx[5].item() == 3  # "cat" -> source "cat", "on" -> "on"


# ---- edits at every hooked layer --------------------------------------------------------------------------

def run_layer(module, name, controller, hidden, enc, fused):
    proc = P2PAttnProcessor(controller, LayerInfo(name, name.split("_")[0], True), fused=fused)
    with torch.no_grad():
        out = proc(module, hidden, enc)
    controller.last_out = out
    return controller.maps[name]


def layer_inputs(module, P, Q, seed):
    g = torch.Generator().manual_seed(seed)
    C = module.to_q.in_features
    return torch.randn(2 * P, Q, C, generator=g), torch.randn(2 * P, 77, module.to_k.in_features, generator=g) * 3


@pytest.mark.parametrize("fused", [True, False])
def test_edits_at_every_cross_layer(sd, fused):
    """For each cross-attention layer of the UNet, with the window open (alpha = 1): replace gives the
    mapped source maps, refine the source maps for aligned tokens and the target's own for new ones,
    reweight scales exactly the chosen token's column (also chained on replace)."""
    tok = sd.tokenizer
    refine_prompts = [SRC, "a big red cat on the table"]
    for li, (name, module) in enumerate(cross_layers(sd.unet)):
        Q = 256 if name.startswith(("down_blocks.0", "up_blocks.1")) else 64
        hidden, enc = layer_inputs(module, 2, Q, seed=li)

        def maps(ctrl):
            ctrl.latent_hw = (16, 16)
            ctrl.store_scales = {1, 2}
            return run_layer(module, name, ctrl, hidden, enc, fused).clone()

        own_ctrl = AttentionStore(2)
        own = maps(own_ctrl)  # no edit: each prompt's own maps
        rep_ctrl = AttentionReplace([SRC, DST], 4, tok, cross_replace_steps=1.0)
        rep = maps(rep_ctrl)
        # the unconditional half of the CFG batch and the source are left alone
        torch.testing.assert_close(rep_ctrl.last_out[:3], own_ctrl.last_out[:3], atol=1e-6, rtol=0)
        assert (rep_ctrl.last_out[3] - own_ctrl.last_out[3]).abs().max() > 1e-4
        M = replacement_mapper(SRC, DST, tok)
        torch.testing.assert_close(rep[1], own[0] @ M, atol=2e-5, rtol=0)
        assert (own[1] - own[0] @ M).abs().max() > 1e-2  # the edit changed something
        torch.testing.assert_close(rep[0], own[0], atol=0, rtol=0)  # the source is never edited

        ref = maps(AttentionRefine(refine_prompts, 4, tok, cross_replace_steps=1.0))
        idx, alpha = refinement_mapper(*refine_prompts, tok)
        aligned, new = alpha.bool(), ~alpha.bool()
        torch.testing.assert_close(ref[1][:, aligned], own[0][:, idx[aligned]], atol=2e-5, rtol=0)
        torch.testing.assert_close(ref[1][:, new], own[1][:, new], atol=2e-5, rtol=0)

        eq = get_equalizer(DST, ["dog"], [-2.5], tok)
        rw = maps(AttentionReweight([SRC, DST], 4, tok, cross_replace_steps=1.0, equalizer=eq,
                                    prev_controller=AttentionReplace([SRC, DST], 4, tok, cross_replace_steps=1.0)))
        col = torch.zeros(77, dtype=torch.bool)
        col[2] = True
        torch.testing.assert_close(rw[1][:, col], -2.5 * rep[1][:, col], atol=2e-5, rtol=0)
        torch.testing.assert_close(rw[1][:, ~col], rep[1][:, ~col], atol=2e-5, rtol=0)
        rw_alone = maps(AttentionReweight([SRC, SRC], 4, tok, cross_replace_steps=1.0,
                                          equalizer=get_equalizer(SRC, "cat", 4.0, tok)))
        torch.testing.assert_close(rw_alone[1][:, 2], 4.0 * own[0][:, 2], atol=2e-5, rtol=0)
        torch.testing.assert_close(rw_alone[1][:, 3:], own[0][:, 3:], atol=2e-5, rtol=0)


def test_replace_pipeline_maps_equal_mapped_source(pipe, sd):
    """Whole sampling run, cross_replace_steps=1: at every hooked cross layer the target's stored maps
    (post-edit, summed over heads and steps) equal the source's through the mapper."""
    out = pipe([SRC, "a zebra on the table"], cross_replace_steps=1.0, self_replace_steps=0.0, num_inference_steps=2,
               latents=latents(), output_type="latent", store_scales=(1, 2))
    ctrl = out.controller
    assert len(ctrl.maps) == 7  # every cross-attention layer of the tiny UNet
    M = replacement_mapper(SRC, "a zebra on the table", sd.tokenizer)
    for name, m in ctrl.maps.items():
        torch.testing.assert_close(m[1], m[0] @ M, atol=1e-4, rtol=1e-5, msg=name)
    # without the edit they differ
    plain = pipe([SRC, "a zebra on the table"], edit_type=None, num_inference_steps=2, latents=latents(),
                 output_type="latent", store_scales=(1, 2)).controller
    m = plain.maps[name]
    assert (m[1] - m[0] @ M).abs().max() > 1e-2


def test_self_injection_window_and_resolution(pipe):
    """Self maps of the targets are routed to the source's only for steps in self_replace_steps and for
    layers at latent/self_min_scale or coarser; the injected map is the source's map."""
    log = []
    ctrl = pipe.make_controller([SRC, DST], "replace", 4, 0.5, (0.25, 0.75), None, None, None, self_min_scale=2)
    orig = ctrl.edit_plan

    def spy(layer, plan, P, s0, scale, K):
        orig(layer, plan, P, s0, scale, K)
        if not layer.is_cross:
            log.append((ctrl.cur_step, scale, plan.src[s0 + 1] == s0))

    ctrl.edit_plan = spy
    pipe([SRC, DST], num_inference_steps=4, latents=latents(), output_type="latent", controller=ctrl)
    assert len(log) == 4 * 7
    for step, scale, injected in log:
        assert injected == (1 <= step < 3 and scale >= 2), (step, scale, injected)
    assert any(i for *_, i in log) and not all(i for *_, i in log)
    # what routing does: the target element's map becomes the source element's map
    g = torch.Generator().manual_seed(3)
    H, Q = 2, 64
    q, k, v = (torch.randn(4 * H, Q, 8, generator=g) for _ in range(3))
    store = torch.zeros(2, Q, Q)
    plan = LayerPlan([-1, -1, -1, 2], [-1] * 4, [-1, -1, 0, 1], store=store)
    out = fused_attention(q, k, v, 8 ** -0.5, H, plan)
    torch.testing.assert_close(store[1], store[0], atol=0, rtol=0)
    p_src = torch.softmax(q[2 * H:3 * H] @ k[2 * H:3 * H].transpose(1, 2) * 8 ** -0.5, -1)
    torch.testing.assert_close(out[3 * H:], p_src @ v[3 * H:], atol=1e-5, rtol=0)


def test_local_blend_keeps_outside_of_mask(pipe):
    seen = []
    ctrl = pipe.make_controller([SRC, DST], "replace", 4, 0.8, 0.4, ("cat", "dog"), None, None,
                                local_blend_kwargs=dict(map_scale=2, threshold=0.95))
    orig = ctrl.step_callback

    def spy(x):
        y = orig(x)
        seen.append((y.clone(), ctrl.local_blend.last_mask.clone()))
        return y

    ctrl.step_callback = spy
    out = pipe([SRC, DST], num_inference_steps=4, latents=latents(), output_type="latent", controller=ctrl)
    assert len(seen) == 4
    for y, mask in seen:
        # a real mask: some latent pixels inside, some outside (the random model's maps are diffuse, so the
        # threshold is high; 0.3 marks every pixel)
        assert 0.05 < mask[1].mean() < 0.95
        outside = mask[1, 0] == 0
        torch.testing.assert_close(y[1][:, outside], y[0][:, outside], atol=0, rtol=0)
        assert (y[1][:, ~outside] - y[0][:, ~outside]).abs().max() > 1e-3
    torch.testing.assert_close(out.latents, seen[-1][0])


# ---- fused kernel == reference == diffusers ---------------------------------------------------------------

def test_fused_equals_reference_for_every_edit_kind():
    g = torch.Generator().manual_seed(0)
    H, P, Q, K, D = 3, 3, 45, 77, 8
    B = 2 * P
    q, k = torch.randn(B * H, Q, D, generator=g), torch.randn(B * H, K, D, generator=g) * 2
    v = torch.randn(B * H, K, 12, generator=g)
    T = P - 1
    mapper = torch.eye(K).repeat(T, 1, 1)
    mapper[0, 3, 3], mapper[0, 3, 4], mapper[0, 3, 5] = 0, 0.5, 0.5
    alpha = (torch.rand(T, K, generator=g) > 0.3).float()
    ridx = torch.randint(0, K, (T, K), generator=g)
    ralpha = (torch.rand(T, K, generator=g) > 0.3).float()
    eq = torch.randn(T, K, generator=g) * 2
    edits = {"replace": dict(mapper=mapper), "refine": dict(refine_index=ridx, refine_alpha=ralpha),
             "reweight": dict(equalizer=eq), "replace+reweight": dict(mapper=mapper, equalizer=eq),
             "refine+reweight": dict(refine_index=ridx, refine_alpha=ralpha, equalizer=eq)}
    src = [-1] * P + [-1] + [P] * T
    slot = [-1] * (P + 1) + list(range(T))
    store_idx = [-1] * P + list(range(P))
    for dtype, tol in [(torch.float32, 1e-5), (torch.float64, 1e-12)]:
        for kind, kw in edits.items():
            e = CrossEdit(alpha=alpha, **kw)
            s1, s2 = torch.zeros(P, Q, K, dtype=dtype), torch.zeros(P, Q, K, dtype=dtype)
            a = fused_attention(q.to(dtype), k.to(dtype), v.to(dtype), D ** -0.5, H, LayerPlan(src, slot, store_idx, e, s1))
            b = reference_attention(q.to(dtype), k.to(dtype), v.to(dtype), D ** -0.5, H, LayerPlan(src, slot, store_idx, e, s2))
            assert (a - b).abs().max() <= tol, (kind, dtype)
            assert (s1 - s2).abs().max() <= tol, (kind, dtype)
        # self-map injection (keys = queries)
        ks, vs = torch.randn(B * H, Q, D, generator=g).to(dtype), torch.randn(B * H, Q, 12, generator=g).to(dtype)
        pl = LayerPlan([-1] * (P + 1) + [P] * T, [-1] * B, [-1] * B)
        assert (fused_attention(q.to(dtype), ks, vs, 0.3, H, pl) - reference_attention(q.to(dtype), ks, vs, 0.3, H, pl)).abs().max() <= tol


def test_fused_unet_matches_diffusers_attn_processor(sd):
    from diffusers.models.attention_processor import AttnProcessor

    from gsplat_kit.edit import register_attention_control

    unet = sd.unet
    g = torch.Generator().manual_seed(1)
    x, c = torch.randn(4, 4, 16, 16, generator=g), torch.randn(4, 77, 32, generator=g)
    saved = unet.attn_processors
    try:
        unet.set_attn_processor(AttnProcessor())
        with torch.no_grad():
            ref = unet(x, 500, encoder_hidden_states=c).sample
            register_attention_control(unet, None, fused=True)
            fused = unet(x, 500, encoder_hidden_states=c).sample
    finally:
        unet.set_attn_processor(saved)
    assert (fused - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("edit_type,prompts,kw", [
    ("replace", [SRC, DST], {}),
    ("refine", [SRC, "a big red cat on the table"], {}),
    ("reweight", [SRC, SRC], dict(equalizer_words=["cat"], equalizer_strengths=[3.0])),
])
def test_pipeline_fused_equals_reference(pipe, edit_type, prompts, kw):
    a = pipe(prompts, edit_type=edit_type, num_inference_steps=2, latents=latents(1), output_type="latent",
             self_min_scale=2, **kw)
    b = pipe(prompts, edit_type=edit_type, num_inference_steps=2, latents=latents(1), output_type="latent",
             self_min_scale=2, fused=False, **kw)
    # the random tiny UNet amplifies rounding (latents are O(1)); measured ~3e-5
    torch.testing.assert_close(a.latents, b.latents, atol=5e-4, rtol=0)
    assert (a.latents[1] - a.latents[0]).abs().max() > 1e-3  # the target differs from the source


def test_outputs_and_attention_grid(pipe):
    out = pipe([SRC, DST], num_inference_steps=2, latents=latents(), output_type="pil", store_scales=(2,))
    assert len(out.images) == 2 and out.images[0].size == (32, 32)
    grid = out.attention_grid()
    assert grid.size[0] > 7 * 128 and grid.size[1] > 2 * 128  # 7 tokens (start ... end) x 2 prompts
    arr = pipe([SRC, DST], num_inference_steps=1, latents=latents(), output_type="np").images
    assert arr.shape == (2, 32, 32, 3) and 0 <= arr.min() and arr.max() <= 1


# ---- bad input ----------------------------------------------------------------------------------------------

def test_bad_input(pipe, sd, tmp_path):
    long_prompt = " ".join(["cat"] * 80)
    with pytest.raises(ValueError, match="tokens long"):
        pipe([SRC, long_prompt], num_inference_steps=1)
    with pytest.raises(ValueError, match="same number of words"):
        pipe([SRC, "a dog on the big table"], num_inference_steps=1)
    with pytest.raises(ValueError, match="'horse' is not in the prompt"):
        pipe([SRC, DST], blend_words=("cat", "horse"), num_inference_steps=1)
    with pytest.raises(ValueError, match="'horse' is not in the prompt"):
        pipe([SRC, DST], edit_type="reweight", equalizer_words=["horse"], equalizer_strengths=[2], num_inference_steps=1)
    with pytest.raises(ValueError, match="equalizer_words and equalizer_strengths"):
        pipe([SRC, DST], edit_type="reweight", num_inference_steps=1)
    with pytest.raises(ValueError, match="edit_type"):
        pipe([SRC, DST], edit_type="swap", num_inference_steps=1)
    with pytest.raises(ValueError, match="needs a source prompt"):
        pipe([SRC], num_inference_steps=1)
    with pytest.raises(ValueError, match="cross_replace_steps: word 'horse'"):
        pipe([SRC, DST], cross_replace_steps={"default_": 1.0, "horse": 0.2}, num_inference_steps=1)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        Prompt2PromptPipeline.from_pretrained(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        Prompt2PromptPipeline.from_pretrained(str(tmp_path))
    with pytest.raises(UnsupportedModelError):
        Prompt2PromptPipeline(sd.vae, sd.text_encoder, sd.tokenizer, sd.vae, sd.scheduler)
    from diffusers import EulerAncestralDiscreteScheduler

    p2 = Prompt2PromptPipeline(sd.vae, sd.text_encoder, sd.tokenizer, sd.unet,
                               EulerAncestralDiscreteScheduler.from_config(sd.scheduler.config))
    with pytest.raises(ValueError, match="EulerAncestralDiscreteScheduler is not supported"):
        p2([SRC, DST], num_inference_steps=1)


def test_zero_hooked_layers_is_an_error(pipe, sd):
    """If something replaces our processors (nothing reaches the controller), the run stops loudly."""
    from diffusers.models.attention_processor import AttnProcessor

    import gsplat_kit.edit.pipeline as pl

    real = pl.register_attention_control

    def hijack(unet, controller, **kw):
        real(unet, controller, **kw)
        unet.set_attn_processor(AttnProcessor())

    pl.register_attention_control = hijack
    try:
        with pytest.raises(RuntimeError, match="no attention layer was hooked"):
            pipe([SRC, DST], num_inference_steps=1)
    finally:
        pl.register_attention_control = real


def test_step_windows_per_word(sd):
    from gsplat_kit.edit.controllers import time_word_alphas

    prompts = [SRC, DST, "a tiger on the table"]
    a = time_word_alphas(prompts, 10, {"default_": (0.0, 0.5), "dog": (0.2, 1.0)}, sd.tokenizer, 77)
    assert a.shape == (11, 2, 77)
    assert a[:5, 0, 1].eq(1).all() and a[5:, 0, 1].eq(0).all()  # default window: steps [0, 5)
    assert a[:2, 0, 2].eq(0).all() and a[2:, 0, 2].eq(1).all()  # "dog" (token 2 of prompt 1): [2, 11)
    assert a[:5, 1, 2].eq(1).all() and a[5:, 1, 2].eq(0).all()  # prompt 2 has no "dog": default
    b = time_word_alphas(prompts, 10, 0.8, sd.tokenizer, 77)
    assert b[:8].eq(1).all() and b[8:].eq(0).all()


def test_local_blend_any_number_of_prompts(sd):
    """Three prompts, maps at latent/4 chosen by resolution: each target keeps the source outside the union
    of its mask and the source's."""
    from gsplat_kit.edit import LocalBlend

    prompts = [SRC, DST, "a tiger on the table"]
    lb = LocalBlend(prompts, ["cat", "dog", ["tiger", "table"]], sd.tokenizer, num_steps=4, threshold=0.5)

    class FakeStore:
        def average_maps(self, scale, places):
            assert scale == 4 and "mid" not in places
            m = torch.zeros(3, 4, 4, 77)
            m[0, 0, 0, 2] = 1  # source "cat" top-left
            m[1, 3, 3, 2] = 1  # "dog" bottom-right
            m[2, 0, 3, 5] = 1  # "table" top-right
            return m

    x = torch.randn(3, 4, 16, 16)
    y = lb(x, FakeStore())
    mask = lb.last_mask[:, 0]
    for p in (1, 2):
        torch.testing.assert_close(y[p][:, mask[p] == 0], x[0][:, mask[p] == 0], atol=0, rtol=0)
        torch.testing.assert_close(y[p][:, mask[p] == 1], x[p][:, mask[p] == 1], atol=1e-6, rtol=0)  # x0 + (x - x0)
    assert mask[1, 0, 0] == 1 and mask[1, 15, 15] == 1 and mask[1, 0, 15] == 0  # source's OR own
    assert mask[2, 0, 15] == 1 and mask[2, 15, 15] == 0


def test_from_pretrained_local_folder(sd, tmp_path):
    sd.save_pretrained(tmp_path / "tiny")
    p = Prompt2PromptPipeline.from_pretrained(str(tmp_path / "tiny"))
    p.set_progress_bar_config(disable=True)
    out = p([SRC, DST], num_inference_steps=1, latents=latents(), output_type="latent")
    assert out.latents.shape == (2, 4, 16, 16) and len(out.controller.layer_maps()) == 0  # nothing stored at 4x4


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_kernel_matches_cpu_reference():
    """The CUDA schedule against the reference (float32 tolerance), every edit kind, with the map store."""
    g = torch.Generator().manual_seed(5)
    H, P, Q, K, D = 4, 2, 300, 77, 40
    B = 2 * P
    q, k = torch.randn(B * H, Q, D, generator=g), torch.randn(B * H, K, D, generator=g)
    v = torch.randn(B * H, K, 40, generator=g)
    mapper = torch.eye(K)[None]
    alpha = torch.ones(1, K)
    eq = torch.ones(1, K)
    eq[0, 2] = -3.0
    edits = [dict(mapper=mapper), dict(refine_index=torch.randperm(K, generator=g)[None], refine_alpha=(torch.rand(1, K, generator=g) > .5).float()),
             dict(equalizer=eq), dict(mapper=mapper, equalizer=eq)]
    for kw in edits:
        e = CrossEdit(alpha=alpha, **kw)
        plan_args = ([-1, -1, -1, 2], [-1, -1, -1, 0], [-1, -1, 0, 1])
        s_gpu, s_cpu = torch.zeros(P, Q, K, device="cuda"), torch.zeros(P, Q, K)
        a = fused_attention(q.cuda(), k.cuda(), v.cuda(), D ** -0.5, H, LayerPlan(*plan_args, e, s_gpu))
        b = reference_attention(q, k, v, D ** -0.5, H, LayerPlan(*plan_args, e, s_cpu))
        assert (a.cpu() - b).abs().max() < 1e-4
        assert (s_gpu.cpu() - s_cpu).abs().max() < 1e-4
    ks, vs = torch.randn(B * H, Q, D, generator=g), torch.randn(B * H, Q, 40, generator=g)
    pl = LayerPlan([-1, -1, -1, 2], [-1] * 4, [-1] * 4)
    a = fused_attention(q.cuda(), ks.cuda(), vs.cuda(), D ** -0.5, H, pl)
    assert (a.cpu() - reference_attention(q, ks, vs, D ** -0.5, H, pl)).abs().max() < 1e-4


def test_local_blend_subtract_words_and_start(sd):
    from gsplat_kit.edit import LocalBlend

    prompts = [SRC, DST]

    class FakeStore:
        def average_maps(self, scale, places):
            m = torch.zeros(2, 4, 4, 77)
            m[:, :, :, 2] = 1.0  # "cat"/"dog" everywhere
            m[:, 0, 0, 5] = 1.0  # "table" top-left only
            return m

    x = torch.randn(2, 4, 16, 16)
    lb = LocalBlend(prompts, ["cat", "dog"], sd.tokenizer, num_steps=4, subtract_words=["table", "table"], start_blend=0.5)
    assert torch.equal(lb(x, FakeStore()), x) and torch.equal(lb(x, FakeStore()), x)  # steps 1, 2: not yet
    y = lb(x, FakeStore())
    mask = lb.last_mask[1, 0]
    assert mask[:4, :4].eq(0).all() and mask[4:, 4:].eq(1).all()  # "table" carved out of the everywhere-mask
    torch.testing.assert_close(y[1][:, :4, :4], x[0][:, :4, :4], atol=0, rtol=0)
