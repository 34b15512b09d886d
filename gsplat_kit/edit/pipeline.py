"""Prompt2PromptPipeline: Stable Diffusion sampling with a P2P controller hooked into every attention
layer (the original's text2image_ldm_stable loop on current diffusers)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from gsplat_kit.common.errors import UserError

from .controllers import (AttentionControl, AttentionRefine, AttentionReplace, AttentionReweight, AttentionStore,
                          LocalBlend, get_equalizer)
from .processor import register_attention_control
from .stable_diffusion import StableDiffusionBase, check_output_type
from .tokens import check_prompt_length
from .viz import attention_grid

# Schedulers whose step is deterministic given the latents and that call the UNet once per step (the
# controller counts layer calls to know the step, as the original does).
SUPPORTED_SCHEDULERS = ("DDIMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
                        "DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler")
EDIT_TYPES = ("replace", "refine", "reweight", None)


@dataclass
class Prompt2PromptOutput:
    images: object  # list of PIL images, np.ndarray [P, H, W, 3] in [0, 1], or latents
    latents: torch.Tensor  # final latents [P, 4, h, w]
    controller: AttentionControl
    prompts: list = field(default_factory=list)
    tokenizer: object = None

    def attention_grid(self, scale=None, cell: int = 128):
        """Per-token heat maps (PIL image), laid over the images when they are PIL/np."""
        imgs = None
        if isinstance(self.images, list):
            imgs = self.images
        elif isinstance(self.images, np.ndarray) and self.images.ndim == 4 and self.images.shape[-1] == 3:
            imgs = (self.images * 255).round().astype(np.uint8)
        return attention_grid(self.controller, self.prompts, self.tokenizer, images=imgs, scale=scale, cell=cell)


def check_scheduler(scheduler):
    name = type(scheduler).__name__
    if name not in SUPPORTED_SCHEDULERS:
        raise UserError(f"scheduler {name} is not supported for Prompt-to-Prompt (stochastic or several UNet calls per "
                        f"step); use one of {', '.join(SUPPORTED_SCHEDULERS)}")


class Prompt2PromptPipeline(StableDiffusionBase):
    """Prompt-to-Prompt on a Stable Diffusion 1.x / 2.x pipeline (epsilon or v-prediction):
    `from_pipe(sd)` / `from_pretrained(path)`, then `pipe(prompts, edit_type=...)`."""

    def make_controller(self, prompts, edit_type, num_steps, cross_replace_steps, self_replace_steps, blend_words,
                        equalizer_words, equalizer_strengths, local_blend_kwargs=None, self_min_scale=4,
                        store_scales=(4,)) -> AttentionControl:
        if edit_type not in EDIT_TYPES:
            raise UserError(f"edit_type must be one of 'replace', 'refine', 'reweight' (or None), got {edit_type!r}")
        tok = self.tokenizer
        if edit_type is None:
            if blend_words is not None or equalizer_words is not None:
                raise UserError("blend_words / equalizer_words need an edit_type")
            for p in prompts:
                check_prompt_length(p, tok)
            return AttentionStore(len(prompts), store_scales=store_scales)
        if len(prompts) < 2:
            raise UserError(f"edit_type={edit_type!r} needs a source prompt and at least one target, got {len(prompts)}")
        lb = None
        if blend_words is not None:
            if isinstance(blend_words, str):
                raise UserError("blend_words: give one word (or list of words) per prompt, e.g. ('cat', 'tiger')")
            lb = LocalBlend(prompts, list(blend_words), tok, num_steps, **(local_blend_kwargs or {}))
        common = dict(local_blend=lb, self_min_scale=self_min_scale, store_scales=store_scales)
        eq = None
        if equalizer_words is not None or edit_type == "reweight":
            if equalizer_words is None or equalizer_strengths is None:
                raise UserError("reweight: equalizer_words and equalizer_strengths are both needed")
            eq = torch.cat([get_equalizer(p, equalizer_words, equalizer_strengths, tok, tok.model_max_length)
                            for p in prompts[1:]])
        prev = None
        if edit_type == "replace":
            prev = AttentionReplace(prompts, num_steps, tok, cross_replace_steps, self_replace_steps, **common)
        elif edit_type == "refine":
            prev = AttentionRefine(prompts, num_steps, tok, cross_replace_steps, self_replace_steps, **common)
        if eq is None:
            return prev
        return AttentionReweight(prompts, num_steps, tok, cross_replace_steps, self_replace_steps, equalizer=eq,
                                 prev_controller=prev, **common)

    # ---- the sampling loop --------------------------------------------------------------------------
    def __call__(self, prompts, edit_type="replace", cross_replace_steps=0.8, self_replace_steps=0.4, blend_words=None,
                 equalizer_words=None, equalizer_strengths=None, num_inference_steps: int = 50,
                 guidance_scale: float = 7.5, generator=None, latents=None, output_type: str = "pil",
                 height: int | None = None, width: int | None = None, uncond_embeddings=None,
                 local_blend_kwargs=None, self_min_scale: float = 4, store_scales=(4,), controller=None,
                 fused: bool | None = None) -> Prompt2PromptOutput:
        """prompts[0] is the source, the others are targets. `latents`: the starting noise, [1, 4, h, w]
        (shared by all prompts, as the original) or [P, 4, h, w]. `uncond_embeddings`: null-text /
        negative-prompt embeddings, one [1, 77, C] tensor or a list with one per step."""
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        check_output_type(output_type)
        if num_inference_steps < 1:
            raise UserError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        check_scheduler(self.scheduler)
        P = len(prompts)
        if controller is None:
            controller = self.make_controller(prompts, edit_type, num_inference_steps, cross_replace_steps,
                                              self_replace_steps, blend_words, equalizer_words, equalizer_strengths,
                                              local_blend_kwargs, self_min_scale, store_scales)
        controller.reset()
        shape = (1, self.unet.config.in_channels, *self.latent_size(height, width))
        dev, dtype = self.device, self.dtype
        if latents is None:
            latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(dev, dtype)
        else:
            latents = torch.as_tensor(latents).to(dev, dtype)
            if latents.dim() != 4 or latents.shape[0] not in (1, P) or latents.shape[1:] != shape[1:]:
                raise UserError(f"latents have shape {tuple(latents.shape)}, expected [1 or {P}, {shape[1]}, {shape[2]}, {shape[3]}]")
        x = latents.expand(P, *shape[1:]).clone()
        controller.latent_hw = (shape[2], shape[3])

        cond = self.encode_prompts(prompts)
        do_cfg = guidance_scale > 1.0
        self.scheduler.set_timesteps(num_inference_steps, device=dev)
        timesteps = self.scheduler.timesteps
        if uncond_embeddings is None:
            uncond = [self.encode_prompts([""] * P)] * len(timesteps)
        elif isinstance(uncond_embeddings, (list, tuple)):
            if len(uncond_embeddings) < len(timesteps):
                raise UserError(f"uncond_embeddings: {len(uncond_embeddings)} given for {len(timesteps)} steps")
            uncond = [u.to(dev, dtype).expand(P, *u.shape[1:]) for u in uncond_embeddings]
        else:
            uncond = [uncond_embeddings.to(dev, dtype).expand(P, *uncond_embeddings.shape[1:])] * len(timesteps)
        if uncond[0].shape[1:] != cond.shape[1:]:
            raise UserError(f"uncond_embeddings are {tuple(uncond[0].shape[1:])} per prompt; this text encoder gives "
                            f"{tuple(cond.shape[1:])} (made with another model?)")
        x = x * self.scheduler.init_noise_sigma

        saved = self.unet.attn_processors
        register_attention_control(self.unet, controller, fused=self.fused if fused is None else fused)
        try:
            with torch.no_grad():
                for i, t in enumerate(tqdm(timesteps, disable=not self.progress, desc="p2p")):
                    inp = torch.cat([x, x]) if do_cfg else x
                    inp = self.scheduler.scale_model_input(inp, t)
                    ctx = torch.cat([uncond[i], cond]) if do_cfg else cond
                    noise = self.unet(inp, t, encoder_hidden_states=ctx).sample
                    if i == 0 and controller.calls == 0:
                        raise RuntimeError("no attention layer was hooked: the UNet's processors did not call the "
                                           "controller (is another processor installed over ours?)")
                    if do_cfg:
                        nu, nc = noise.chunk(2)
                        noise = nu + guidance_scale * (nc - nu)
                    x = self.scheduler.step(noise, t, x).prev_sample
                    x = controller.step_callback(x)
        finally:
            self.unet.set_attn_processor(saved)
        images = self.output(x, output_type)
        return Prompt2PromptOutput(images=images, latents=x, controller=controller, prompts=prompts, tokenizer=self.tokenizer)
