"""Plug-and-Play diffusion features (Tumanyan et al., CVPR 2023): text-driven image-to-image translation
by injecting the guidance image's features into the generation.

The guidance image is DDIM-inverted (with `inversion_prompt`, "" by default); sampling then runs three
branches in one batch, [source, unconditional, conditional], where the source branch is the inversion
latent at each timestep. During the first `pnp_f_t` of the steps the decoder's residual features
(`feature_layers`, default up_blocks.1.resnets.1) of the translated branches are replaced by the
source's, and during the first `pnp_attn_t` their self-attention queries and keys. The inversion may take
finer steps than the sampling (`inversion_steps`; pnp-diffusers inverts with 1000): the source branch then
takes the inversion latent at each sampling timestep. Injecting Q and K is injecting the self-attention
map softmax(Q_s K_s^T / sqrt(d)), which the fused kernel does by routing (`src`), without computing the
translated branches' maps at all. As in MichalGeyer/pnp-diffusers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from gsplat_kit.common.errors import UserError

from . import inversion as inv
from .controllers import AttentionControl
from .plan import LayerPlan
from .processor import register_attention_control
from .stable_diffusion import StableDiffusionBase, check_output_type


class PnPError(UserError):
    """A Plug-and-Play setting does not fit the model."""


def _check_levels(inversion_timesteps, timesteps) -> None:
    """PnPError unless the inversion's timesteps include every sampling timestep (an inversion with as
    many steps does, or with 1000)."""
    have = {int(t) for t in inversion_timesteps}
    missing = [int(t) for t in timesteps if int(t) not in have]
    if missing:
        raise PnPError(f"the inversion has {len(have)} steps, whose timesteps do not include the {len(timesteps)} "
                       f"sampling steps' (e.g. t={missing[0]}): invert with {len(timesteps)} steps, or with 1000 as "
                       f"pnp-diffusers does")


def _sources_at(inversion: inv.InversionResult, timesteps) -> list:
    """The inversion latent at the noise level of each sampling timestep (the source branch)."""
    _check_levels(inversion.timesteps, timesteps)
    traj, ts = inversion.trajectory, [int(t) for t in inversion.timesteps]
    at_level = {t: traj[len(ts) - j] for j, t in enumerate(ts)}  # traj[k]: the level of timestep ts[N - k]
    return [at_level[int(t)] for t in timesteps]


@dataclass
class PnPOutput:
    images: object  # list of PIL images, np.ndarray [N, H, W, 3] in [0, 1], or latents
    latents: torch.Tensor
    inversion: inv.InversionResult


class PnPInjection(AttentionControl):
    """Self-attention map injection from batch element 0 into every other element, at the named layers,
    while the step is below `attn_steps`."""

    def __init__(self, layer_names, attn_steps: int, latent_hw=None):
        super().__init__(num_prompts=1, store_scales=(), latent_hw=latent_hw)
        self.layer_names = set(layer_names)
        self.attn_steps = attn_steps

    def edit_plan(self, layer, plan: LayerPlan, P, s0, scale, K):
        if layer.name in self.layer_names and not layer.is_cross and self.cur_step < self.attn_steps:
            plan.src[:] = [-1] + [0] * (len(plan.src) - 1)


def default_attn_layers(unet) -> list[str]:
    """Decoder self-attention layers but the first (pnp-diffusers: blocks 4-11 of SD's decoder)."""
    names = [n for n in unet.attn_processors if n.startswith("up_blocks.") and ".attn1." in n]
    if len(names) < 2:
        raise PnPError("the UNet's decoder has fewer than two self-attention layers; name attn_layers explicitly")
    return names[1:]


def _resolve_attn_layers(unet, layers) -> list[str]:
    if layers is None:
        return default_attn_layers(unet)
    procs = unet.attn_processors
    out = []
    for name in layers:
        full = name if name.endswith(".processor") else name + ".processor"
        if full not in procs:
            raise PnPError(f"attention layer {name!r} is not in the UNet (e.g. {next(iter(procs))!r})")
        if ".attn1." not in full:
            raise PnPError(f"attention layer {name!r} is not a self-attention layer (attn1)")
        out.append(full)
    return out


def _resolve_modules(unet, names):
    mods = []
    for name in names:
        try:
            mods.append(unet.get_submodule(name))
        except AttributeError as e:
            raise PnPError(f"feature layer {name!r} is not in the UNet ({e})") from e
    return mods


class PlugAndPlayPipeline(StableDiffusionBase):
    """Plug-and-Play on a Stable Diffusion 1.x / 2.x pipeline: `from_pipe(sd)` / `from_pretrained(path)`,
    then `pipe(image, prompt, ...)`."""

    def check(self, num_inference_steps: int = 50, pnp_f_t: float = 0.8, pnp_attn_t: float = 0.5,
              feature_layers=("up_blocks.1.resnets.1",), attn_layers=None, inversion_steps: int | None = None,
              output_type: str = "pil"):
        """Everything about the settings that can be wrong, checked before any work (PnPError); returns
        (feature modules, self-attention processor names)."""
        for name, v in (("pnp_f_t", pnp_f_t), ("pnp_attn_t", pnp_attn_t)):
            if not 0.0 <= v <= 1.0:
                raise PnPError(f"{name} must be in [0, 1], got {v}")
        if num_inference_steps < 1 or (inversion_steps is not None and inversion_steps < 1):
            raise PnPError(f"steps must be >= 1, got {num_inference_steps} (inversion {inversion_steps})")
        check_output_type(output_type)
        if inversion_steps is not None:
            sched = inv.ddim_scheduler(self)
            sched.set_timesteps(inversion_steps)
            inversion_ts = sched.timesteps.clone()
            sched.set_timesteps(num_inference_steps)
            _check_levels(inversion_ts, sched.timesteps)
        return _resolve_modules(self.unet, feature_layers), _resolve_attn_layers(self.unet, attn_layers)

    @torch.no_grad()
    def __call__(self, image, prompt: str, negative_prompt: str = "", inversion_prompt: str = "",
                 num_inference_steps: int = 50, guidance_scale: float = 7.5, pnp_f_t: float = 0.8,
                 pnp_attn_t: float = 0.5, feature_layers=("up_blocks.1.resnets.1",), attn_layers=None,
                 inversion: inv.InversionResult | None = None, inversion_steps: int | None = None, height=None,
                 width=None, output_type: str = "pil", progress: bool | None = None) -> PnPOutput:
        progress = self.progress if progress is None else progress
        n = num_inference_steps
        feat_mods, attn_names = self.check(n, pnp_f_t, pnp_attn_t, feature_layers, attn_layers,
                                           None if inversion is not None else inversion_steps or n, output_type)
        unet = self.unet
        sched = inv.ddim_scheduler(self)
        if inversion is None:
            inversion = inv.invert(self, image, inversion_prompt, method="ddim", num_inference_steps=inversion_steps or n,
                                   height=height, width=width, progress=progress)
        sched.set_timesteps(n)
        sources = _sources_at(inversion, sched.timesteps)
        emb = self.encode_prompts([inversion.prompt, negative_prompt, prompt])  # [source, uncond, cond]
        feat_steps, attn_steps = int(n * pnp_f_t), int(n * pnp_attn_t)

        step = {"i": 0}

        def inject_features(module, args, output):
            if step["i"] < feat_steps:
                output = output.clone()
                output[1:] = output[:1]
            return output

        hw = tuple(sources[0].shape[-2:])
        ctrl = PnPInjection(attn_names, attn_steps, latent_hw=hw)
        original = unet.attn_processors
        handles = [m.register_forward_hook(inject_features) for m in feat_mods]
        try:
            register_attention_control(unet, ctrl, fused=self.fused)
            ctrl.latent_hw = hw
            x = sources[0]
            for i, t in enumerate(tqdm(sched.timesteps, desc="Plug-and-Play", disable=not progress)):
                step["i"] = i
                ctrl.cur_step, ctrl.cur_att_layer = i, 0
                out = unet(torch.cat([sources[i], x, x]), t, encoder_hidden_states=emb).sample
                _, ou, oc = out.chunk(3)
                x = sched.step(ou + guidance_scale * (oc - ou), t, x).prev_sample
        finally:
            for h in handles:
                h.remove()
            unet.set_attn_processor(original)
        return PnPOutput(images=self.output(x, output_type), latents=x, inversion=inversion)
