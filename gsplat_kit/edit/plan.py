"""What one attention layer does at one step: the routing of every batch element and the cross edit, in
two equal forms: the original P2P form (mapper / refine gather / equalizer / alpha blend, read by the
pure-PyTorch reference) and the fused kernel's form (csrc/include/attention_math.h):

    P_b[q, n] = own_b[q, n] * c_t[n] + sum_w own_src[q, w] * W_t[w, n]

    replace   W = alpha * eq * M,                c = 1 - alpha
    refine    W = alpha * eq * onehot(idx) * a,  c = 1 - alpha + alpha * eq * (1 - a)
    reweight  W = alpha * eq * I (or chained on replace / refine as above)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class CrossEdit:
    """Per target slot t (prompt t + 1): alpha [T, K] (the step's cross_replace window per token) and one
    of mapper [T, K, K] (word swap) / refine_index [T, K] + refine_alpha [T, K]; optional equalizer [T, K]."""
    alpha: torch.Tensor
    mapper: torch.Tensor | None = None
    refine_index: torch.Tensor | None = None
    refine_alpha: torch.Tensor | None = None
    equalizer: torch.Tensor | None = None
    cache: dict = field(default_factory=dict, repr=False, compare=False)  # the kernel's form, per dtype/device

    @property
    def num_slots(self) -> int:
        return self.alpha.shape[0]

    @property
    def num_keys(self) -> int:
        return self.alpha.shape[1]

    def dense(self):
        """(W [T, K, K] indexed [t, w, n], c [T, K]) in float64."""
        a = self.alpha.double()
        T, K = a.shape
        eq = self.equalizer.double() if self.equalizer is not None else torch.ones(T, K, dtype=torch.float64)
        if self.mapper is not None:
            base = self.mapper.double()
            c = 1 - a
        elif self.refine_index is not None:
            ra = self.refine_alpha.double()
            base = torch.zeros(T, K, K, dtype=torch.float64)
            base.scatter_(1, self.refine_index.long()[:, None, :], ra[:, None, :])
            c = 1 - a + a * eq * (1 - ra)
        else:
            base = torch.eye(K, dtype=torch.float64).expand(T, K, K)
            c = 1 - a
        W = base * (a * eq)[:, None, :]
        return W, c

    def columns(self, dtype=torch.float32):
        """The kernel's compressed-column form: col_ptr [T*(K+1)] int32, rows int32, vals, c [T, K]."""
        W, c = self.dense()
        T, K, _ = W.shape
        Wt = W.transpose(1, 2)  # [t, n, w]
        nz = Wt.nonzero()  # sorted by (t, n, w)
        counts = torch.zeros(T * K, dtype=torch.int64)
        counts.index_add_(0, nz[:, 0] * K + nz[:, 1], torch.ones(len(nz), dtype=torch.int64))
        col_ptr = torch.zeros(T, K + 1, dtype=torch.int64)
        col_ptr[:, 1:] = counts.view(T, K).cumsum(1)
        col_ptr += torch.cat([torch.zeros(1, dtype=torch.int64), counts.view(T, K).sum(1).cumsum(0)[:-1]])[:, None]
        vals = Wt[nz[:, 0], nz[:, 1], nz[:, 2]]
        return (col_ptr.flatten().to(torch.int32), nz[:, 2].to(torch.int32).contiguous(), vals.to(dtype).contiguous(),
                c.to(dtype).contiguous())


@dataclass
class LayerPlan:
    """Routing of the B batch elements of one layer call (B = CFG halves x P prompts).
    src[b]: -1 own map, else the element whose map is used (self-map injection when slot[b] == -1);
    slot[b]: -1 no cross edit, else the CrossEdit slot; store_idx[b]: -1, else the row of `store`
    ([S, Q, K], float) that the head-summed map is added to."""
    src: list[int]
    slot: list[int]
    store_idx: list[int]
    edit: CrossEdit | None = None
    store: torch.Tensor | None = None

    @staticmethod
    def identity(B: int) -> "LayerPlan":
        return LayerPlan([-1] * B, [-1] * B, [-1] * B)

    @property
    def active(self) -> bool:
        return any(s >= 0 for s in self.src) or any(s >= 0 for s in self.store_idx)

    def check(self, B: int, K: int):
        if not (len(self.src) == len(self.slot) == len(self.store_idx) == B):
            raise ValueError(f"layer plan is for {len(self.src)} batch elements, the layer has {B}")
        for b in range(B):
            s = self.src[b]
            if self.slot[b] >= 0 and (s < 0 or self.edit is None):
                raise ValueError(f"element {b} has an edit slot but no source element / edit")
            if s >= 0 and (self.src[s] >= 0 or self.slot[s] >= 0):
                raise ValueError(f"element {b} reads element {s}, which is itself edited")
        if self.edit is not None and self.edit.num_keys != K:
            raise ValueError(f"the edit is for {self.edit.num_keys} text tokens, the layer attends to {K} keys")
