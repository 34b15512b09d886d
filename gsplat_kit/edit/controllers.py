"""Prompt-to-Prompt controllers (Hertz et al., ICLR 2023), with the semantics of google/prompt-to-prompt:
prompt 0 is the source, prompts 1..P-1 are targets, edits touch only the conditional half of the CFG
batch. A controller does not touch tensors itself: for each hooked layer call it returns a LayerPlan
(plan.py) that the fused kernel or the reference carries out, and it keeps the maps that were asked for.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gsplat_kit.common.errors import UserError

from .plan import CrossEdit, LayerPlan
from .tokens import (check_prompt_length, refinement_mapper, replacement_mapper, require_word_indices,
                     word_token_indices)


@dataclass(frozen=True)
class LayerInfo:
    """One hooked attention layer: diffusers' processor name, place in the UNet, cross or self."""
    name: str
    place: str  # "down" | "mid" | "up"
    is_cross: bool


def layer_scale(num_queries: int, latent_hw) -> float | None:
    """s such that the layer works at latent/s (s = 1, 2, 4, 8 ...), None if it is not a downscale."""
    area = latent_hw[0] * latent_hw[1]
    if num_queries <= 0 or area % num_queries:
        return None
    s = (area // num_queries) ** 0.5
    return s if abs(s - round(s)) < 1e-9 else None


class AttentionControl:
    """Counts hooked layer calls to know the denoising step (as the original does), so it also works
    inside a stock diffusers loop. `store_scales`: layers (cross-attention) at latent/s whose post-edit
    maps, summed over heads and steps, are kept (the AttentionStore; LocalBlend adds its own scale)."""

    def __init__(self, num_prompts: int = 1, store_scales=(), latent_hw=None):
        self.num_prompts = num_prompts
        self.store_scales = set(store_scales)
        self.latent_hw = latent_hw
        self.num_att_layers = 0  # set by register_attention_control
        self.calls = 0
        self.reset()

    def reset(self):
        self.cur_step = 0
        self.cur_att_layer = 0
        self.maps: dict[str, torch.Tensor] = {}  # layer name -> [P, Q, K] sum over heads and steps
        self.heads: dict[str, int] = {}
        self.scales: dict[str, float] = {}
        self.info: dict[str, LayerInfo] = {}

    # ---- per layer call -------------------------------------------------------------------------------
    def wants_store(self, layer: LayerInfo, scale) -> bool:
        return layer.is_cross and scale is not None and scale in self.store_scales

    def edit_plan(self, layer: LayerInfo, plan: LayerPlan, P: int, s0: int, scale, K: int):
        """Edit controllers fill in src/slot/edit for the conditional block starting at s0."""

    def layer_plan(self, layer: LayerInfo, B: int, heads: int, Q: int, K: int, device, dtype) -> LayerPlan:
        P = self.num_prompts
        if B % P:
            raise ValueError(f"layer {layer.name}: batch of {B} is not a multiple of the {P} prompts")
        if self.latent_hw is None:
            raise RuntimeError("controller.latent_hw is not set (register_attention_control sets it)")
        s0 = B - P  # the conditional half (or the whole batch without CFG)
        scale = layer_scale(Q, self.latent_hw)
        plan = LayerPlan.identity(B)
        self.edit_plan(layer, plan, P, s0, scale, K)
        if self.wants_store(layer, scale):
            work = dtype if dtype in (torch.float32, torch.float64) else torch.float32
            st = self.maps.get(layer.name)
            if st is None or st.shape != (P, Q, K):
                st = torch.zeros(P, Q, K, dtype=work, device=device)
                self.maps[layer.name] = st
                self.heads[layer.name] = heads
                self.scales[layer.name] = scale
                self.info[layer.name] = layer
            plan.store = st
            plan.store_idx = [-1] * s0 + list(range(P))
        return plan

    def after_layer(self):
        self.calls += 1
        self.cur_att_layer += 1
        if self.num_att_layers and self.cur_att_layer >= self.num_att_layers:
            self.cur_att_layer = 0
            self.cur_step += 1

    def step_callback(self, x_t: torch.Tensor) -> torch.Tensor:
        return x_t

    # ---- stored maps ----------------------------------------------------------------------------------
    def layer_maps(self) -> dict[str, torch.Tensor]:
        """Per hooked cross layer: [P, Q, K] post-edit maps averaged over heads and steps."""
        steps = max(self.cur_step, 1)
        return {n: m / (self.heads[n] * steps) for n, m in self.maps.items()}

    def average_maps(self, scale=None, places=("down", "mid", "up")) -> torch.Tensor:
        """[P, h, w, K]: cross maps averaged over heads, layers at latent/scale and steps (the original's
        aggregate_attention). scale None: the largest-count scale stored."""
        names = [n for n in self.maps if self.info[n].place in places and (scale is None or self.scales[n] == scale)]
        if scale is None and names:
            scale = max({self.scales[n] for n in names}, key=lambda s: sum(self.scales[n] == s for n in names))
            names = [n for n in names if self.scales[n] == scale]
        if not names:
            have = sorted({self.scales[n] for n in self.maps})
            raise UserError(f"no cross-attention maps stored at latent/{scale} (stored scales: {have})")
        total = sum(self.maps[n] for n in names)
        count = sum(self.heads[n] for n in names) * max(self.cur_step, 1)
        h, w = int(self.latent_hw[0] // scale), int(self.latent_hw[1] // scale)
        P, _, K = total.shape
        return (total / count).view(P, h, w, K)


class AttentionStore(AttentionControl):
    """Keeps the cross-attention maps for heat maps (default: layers at latent/4, as the original's 16x16
    grid at 512 px)."""

    def __init__(self, num_prompts: int = 1, store_scales=(4,), latent_hw=None):
        super().__init__(num_prompts, store_scales, latent_hw)


def _steps_pair(steps, what: str):
    if isinstance(steps, (int, float)):
        steps = (0.0, float(steps))
    if not (isinstance(steps, (tuple, list)) and len(steps) == 2):
        raise UserError(f"{what}: expected a float or a (start, end) pair of fractions, got {steps!r}")
    a, b = float(steps[0]), float(steps[1])
    if not (0 <= a <= b <= 1):
        raise UserError(f"{what}: need 0 <= start <= end <= 1, got {steps!r}")
    return a, b


def time_word_alphas(prompts, num_steps: int, cross_replace_steps, tokenizer, max_len: int) -> torch.Tensor:
    """[num_steps + 1, P-1, K]: 1 where target token n takes the source map at step i (the original's
    get_time_words_attention_alpha; a dict gives per-word windows plus a `default_` one)."""
    if not isinstance(cross_replace_steps, dict):
        cross_replace_steps = {"default_": cross_replace_steps}
    cross_replace_steps = dict(cross_replace_steps)
    cross_replace_steps.setdefault("default_", (0.0, 1.0))
    alpha = torch.zeros(num_steps + 1, len(prompts) - 1, max_len)

    def put(bounds, i, inds=None):
        a, b = _steps_pair(bounds, "cross_replace_steps")
        start, end = int(a * (num_steps + 1)), int(b * (num_steps + 1))
        cols = slice(None) if inds is None else list(inds)
        alpha[:start, i, cols] = 0
        alpha[start:end, i, cols] = 1
        alpha[end:, i, cols] = 0

    for i in range(len(prompts) - 1):
        put(cross_replace_steps["default_"], i)
    for word, bounds in cross_replace_steps.items():
        if word == "default_":
            continue
        found = False
        for i in range(1, len(prompts)):
            inds = word_token_indices(prompts[i], word, tokenizer)
            if inds:
                found = True
                put(bounds, i - 1, inds)
        if not found:
            raise UserError(f"cross_replace_steps: word {word!r} is in none of the target prompts {prompts[1:]!r}")
    return alpha


class LocalBlend:
    """Keeps the latent outside the edited words' attention mask equal to the source's (P2P Sec. 3.2).
    Maps: cross-attention layers at latent/`map_scale` (chosen by resolution), mean over heads, layers and
    steps so far; 3x3 max-pool, resized to the latent, normalised by its max, > threshold; the mask of
    prompt 0 is OR-ed into every prompt's. `subtract_words` carve their (unpooled) mask out."""

    def __init__(self, prompts, words, tokenizer, num_steps: int, subtract_words=None, threshold: float = 0.3,
                 subtract_threshold: float = 0.3, start_blend: float = 0.0, map_scale: float = 4, max_len: int = 77):
        if len(words) != len(prompts):
            raise UserError(f"blend_words: need one entry (a word or a list of words) per prompt ({len(prompts)}), "
                             f"got {len(words)}")
        self.alpha = self._alphas(prompts, words, tokenizer, max_len, "blend_words")
        self.subtract = (None if subtract_words is None
                         else self._alphas(prompts, subtract_words, tokenizer, max_len, "subtract_words"))
        self.threshold, self.subtract_threshold = threshold, subtract_threshold
        self.start_blend = int(start_blend * num_steps)
        self.map_scale = map_scale
        self.counter = 0
        self.last_mask = None

    @staticmethod
    def _alphas(prompts, words, tokenizer, max_len, what):
        alpha = torch.zeros(len(prompts), max_len)
        for i, (prompt, ws) in enumerate(zip(prompts, words)):
            for w in [ws] if isinstance(ws, str) else list(ws):
                alpha[i, require_word_indices(prompt, w, tokenizer, what)] = 1
        return alpha

    def _mask(self, maps, alpha, use_pool, threshold, size):
        m = (maps * alpha.to(maps)[:, None, None, :]).sum(-1)[:, None]  # [P, 1, h, w]
        if use_pool:
            m = F.max_pool2d(m, (3, 3), (1, 1), padding=(1, 1))
        m = F.interpolate(m, size=size)
        m = m / m.amax(dim=(2, 3), keepdim=True).clamp_min(torch.finfo(m.dtype).tiny)
        m = m.gt(threshold)
        return m[:1] | m

    def __call__(self, x_t: torch.Tensor, controller: AttentionControl) -> torch.Tensor:
        self.counter += 1
        if self.counter <= self.start_blend:
            return x_t
        maps = controller.average_maps(self.map_scale, places=("down", "up"))
        mask = self._mask(maps, self.alpha, True, self.threshold, x_t.shape[2:])
        if self.subtract is not None:
            mask = mask & ~self._mask(maps, self.subtract, False, self.subtract_threshold, x_t.shape[2:])
        mask = mask.to(x_t.dtype)
        self.last_mask = mask
        return x_t[:1] + mask * (x_t - x_t[:1])


class AttentionEdit(AttentionControl):
    """Common part of the edits: the cross-attention window per step and word, the self-attention window,
    the resolution limit of self-map injection (layers at latent/`self_min_scale` or coarser: the
    original's 16x16 at 512 px), and LocalBlend."""

    def __init__(self, prompts, num_steps: int, tokenizer, cross_replace_steps=0.8, self_replace_steps=0.4,
                 local_blend: LocalBlend | None = None, self_min_scale: float = 4, store_scales=(), latent_hw=None):
        if len(prompts) < 2:
            raise UserError(f"an edit needs a source and at least one target prompt, got {len(prompts)} prompt(s)")
        for p in prompts:
            check_prompt_length(p, tokenizer)
        self.prompts = list(prompts)
        self.tokenizer = tokenizer
        self.max_len = tokenizer.model_max_length
        self.num_steps = num_steps
        self.cross_alpha = time_word_alphas(prompts, num_steps, cross_replace_steps, tokenizer, self.max_len)
        a, b = _steps_pair(self_replace_steps, "self_replace_steps")
        self.num_self_replace = int(num_steps * a), int(num_steps * b)
        self.self_min_scale = self_min_scale
        self.local_blend = local_blend
        scales = set(store_scales)
        if local_blend is not None:
            scales.add(local_blend.map_scale)
        super().__init__(len(prompts), scales, latent_hw)
        self._edits: dict[int, CrossEdit | None] = {}

    def reset(self):
        super().reset()
        self._edits = {}
        if getattr(self, "local_blend", None) is not None:
            self.local_blend.counter = 0

    def cross_edit(self, alpha: torch.Tensor) -> CrossEdit:
        raise NotImplementedError

    def _step_edit(self) -> CrossEdit | None:
        step = min(self.cur_step, self.cross_alpha.shape[0] - 1)
        if step not in self._edits:
            alpha = self.cross_alpha[step]
            self._edits[step] = self.cross_edit(alpha) if bool(alpha.any()) else None
        return self._edits[step]

    def edit_plan(self, layer, plan, P, s0, scale, K):
        targets = range(s0 + 1, s0 + P)
        if layer.is_cross:
            e = self._step_edit()
            if e is None:
                return
            if K != self.max_len:
                raise ValueError(f"layer {layer.name} attends to {K} text tokens, the tokenizer gives {self.max_len}")
            plan.edit = e
            for t, b in enumerate(targets):
                plan.src[b], plan.slot[b] = s0, t
        else:
            in_window = self.num_self_replace[0] <= self.cur_step < self.num_self_replace[1]
            if in_window and scale is not None and scale >= self.self_min_scale:
                for b in targets:
                    plan.src[b] = s0

    def step_callback(self, x_t):
        if self.local_blend is not None:
            x_t = self.local_blend(x_t, self)
        return x_t


class AttentionReplace(AttentionEdit):
    """Word swap: target token maps are the source maps through the word-alignment mapper."""

    def __init__(self, prompts, num_steps, tokenizer, cross_replace_steps=0.8, self_replace_steps=0.4, **kw):
        super().__init__(prompts, num_steps, tokenizer, cross_replace_steps, self_replace_steps, **kw)
        self.mapper = torch.stack([replacement_mapper(prompts[0], p, tokenizer, self.max_len) for p in prompts[1:]])

    def cross_edit(self, alpha):
        return CrossEdit(alpha=alpha, mapper=self.mapper)


class AttentionRefine(AttentionEdit):
    """Refinement: aligned tokens take the source map, new tokens keep their own."""

    def __init__(self, prompts, num_steps, tokenizer, cross_replace_steps=0.8, self_replace_steps=0.4, **kw):
        super().__init__(prompts, num_steps, tokenizer, cross_replace_steps, self_replace_steps, **kw)
        pairs = [refinement_mapper(prompts[0], p, tokenizer, self.max_len) for p in prompts[1:]]
        self.mapper = torch.stack([m for m, _ in pairs])
        self.alphas = torch.stack([a for _, a in pairs])

    def cross_edit(self, alpha):
        return CrossEdit(alpha=alpha, refine_index=self.mapper, refine_alpha=self.alphas)


class AttentionReweight(AttentionEdit):
    """Re-weighting: the (optionally replaced / refined) source maps scaled per token by an equalizer
    (values may be negative; no renormalisation, as the original)."""

    def __init__(self, prompts, num_steps, tokenizer, cross_replace_steps=0.8, self_replace_steps=0.4,
                 equalizer: torch.Tensor | None = None, prev_controller: AttentionEdit | None = None, **kw):
        super().__init__(prompts, num_steps, tokenizer, cross_replace_steps, self_replace_steps, **kw)
        if equalizer is None:
            raise UserError("reweight edit: an equalizer is needed (see get_equalizer)")
        equalizer = torch.as_tensor(equalizer, dtype=torch.float32)
        if equalizer.dim() == 1:
            equalizer = equalizer[None]
        if equalizer.shape[-1] != self.max_len or equalizer.shape[0] not in (1, len(prompts) - 1):
            raise UserError(f"equalizer has shape {tuple(equalizer.shape)}, expected [1 or {len(prompts) - 1}, {self.max_len}]")
        self.equalizer = equalizer.expand(len(prompts) - 1, self.max_len).contiguous()
        self.prev_controller = prev_controller

    def cross_edit(self, alpha):
        if self.prev_controller is not None:
            e = self.prev_controller.cross_edit(alpha)
        else:
            e = CrossEdit(alpha=alpha)
        e.equalizer = self.equalizer if e.equalizer is None else e.equalizer * self.equalizer
        return e


def get_equalizer(text: str, words, values, tokenizer, max_len: int = 77) -> torch.Tensor:
    """[1, max_len] ones with `values` at the tokens of `words` (words may repeat the same value)."""
    if isinstance(words, (str, int)):
        words = (words,)
    if isinstance(values, (int, float)):
        values = (values,) * len(words)
    if len(values) != len(words):
        raise UserError(f"equalizer: {len(words)} words but {len(values)} strengths")
    eq = torch.ones(1, max_len)
    for w, v in zip(words, values):
        eq[:, require_word_indices(text, w, tokenizer, "equalizer_words")] = float(v)
    return eq
