"""One attention layer's computation under a LayerPlan: the fused native kernel and its pure-PyTorch
reference (the original P2P formulas, materialising every map). Both take q [B*H, Q, D], k [B*H, K, D],
v [B*H, K, Dv] in diffusers' head_to_batch_dim order and return out [B*H, Q, Dv]; when the plan has a
store, the post-edit maps summed over heads are added to it in place."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .plan import LayerPlan


def reference_attention(q, k, v, scale: float, heads: int, plan: LayerPlan | None = None, attention_mask=None,
                        upcast_softmax: bool = False):
    BH, Q, _ = q.shape
    K = k.shape[1]
    B = BH // heads
    # diffusers' Attention.get_attention_scores: baddbmm(beta 0, alpha scale), softmax over keys
    if attention_mask is None:
        scores = torch.baddbmm(torch.empty(BH, Q, K, dtype=q.dtype, device=q.device), q, k.transpose(-1, -2),
                               beta=0, alpha=scale)
    else:
        scores = torch.baddbmm(attention_mask, q, k.transpose(-1, -2), beta=1, alpha=scale)
    if upcast_softmax:
        scores = scores.float()
    probs = scores.softmax(dim=-1).to(q.dtype)
    if plan is not None and plan.active:
        plan.check(B, K)
        own = probs.view(B, heads, Q, K)
        new = own.clone()
        e = plan.edit
        for b in range(B):
            s = plan.src[b]
            if s < 0:
                continue
            t = plan.slot[b]
            if t < 0:  # self-map injection (P2P's replace_self_attention)
                new[b] = own[s]
                continue
            ps, pt = own[s], own[b]
            if e.mapper is not None:  # AttentionReplace: einsum('hpw,bwn->bhpn')
                base = torch.einsum("hqw,wn->hqn", ps, e.mapper[t].to(ps))
            elif e.refine_index is not None:  # AttentionRefine: source gathered through the alignment
                ra = e.refine_alpha[t].to(ps)
                base = ps[:, :, e.refine_index[t].long()] * ra + pt * (1 - ra)
            else:
                base = ps
            if e.equalizer is not None:  # AttentionReweight
                base = base * e.equalizer[t].to(ps)
            a = e.alpha[t].to(ps)
            new[b] = base * a + (1 - a) * pt
        if plan.store is not None:
            for b in range(B):
                if plan.store_idx[b] >= 0:
                    plan.store[plan.store_idx[b]] += new[b].sum(0).to(plan.store.dtype)
        probs = new.view(BH, Q, K)
    return torch.bmm(probs, v)


# A layer with nothing edited and nothing stored is plain attention. Over many keys (SD's 64x64
# self-attention) torch's SDPA, a flash-attention kernel that streams key/value blocks with an online
# softmax, is the faster one; at cross-attention's 77 keys this kernel is (measured in BENCHMARKS.md
# "edit", `bench_attention.py --plain`). On a GPU, SDPA takes every plain layer.
SDPA_MIN_KEYS = 2048


def fused_attention(q, k, v, scale: float, heads: int, plan: LayerPlan | None = None):
    from gsplat_kit import _backend

    ops = _backend.ops()
    BH, Q, _ = q.shape
    B = BH // heads
    K = k.shape[1]
    dtype = q.dtype
    work = dtype if dtype in (torch.float32, torch.float64) else torch.float32  # half: computed in fp32
    q, k, v = (x.to(work).contiguous() for x in (q, k, v))
    if plan is None:
        plan = LayerPlan.identity(B)
    if not plan.active and (q.is_cuda or K >= SDPA_MIN_KEYS):
        D, Dv = q.shape[-1], v.shape[-1]
        out = F.scaled_dot_product_attention(q.view(B, heads, Q, D), k.view(B, heads, K, D), v.view(B, heads, K, Dv),
                                             scale=scale)
        return out.reshape(BH, Q, Dv).to(dtype)
    plan.check(B, K)
    dev = q.device
    cols = None
    if plan.edit is not None and any(t >= 0 for t in plan.slot):
        key = ("cols", work, str(dev))
        cols = plan.edit.cache.get(key)
        if cols is None:
            col_ptr, rows, vals, c = plan.edit.columns(work)
            cols = tuple(x.to(dev) for x in (col_ptr.view(c.shape[0], K + 1), rows, vals, c))
            plan.edit.cache[key] = cols
    store = plan.store
    if store is not None and any(i >= 0 for i in plan.store_idx):
        if store.dtype != work or not store.is_contiguous() or store.device != dev:
            raise ValueError(f"map store must be a contiguous {work} tensor on {dev}")
    else:
        store = None
    col_ptr, rows, vals, c = cols or (None, None, None, None)
    out = ops.attention_forward(q, k, v, int(heads), float(scale), list(plan.src), list(plan.slot), col_ptr, rows, vals, c,
                               store, list(plan.store_idx))
    return out.to(dtype)
