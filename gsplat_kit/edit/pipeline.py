"""Prompt2PromptPipeline: Stable Diffusion sampling with a P2P controller hooked into every attention
layer (the original's text2image_ldm_stable loop on current diffusers)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .controllers import (AttentionControl, AttentionRefine, AttentionReplace, AttentionReweight, AttentionStore,
                          LocalBlend, get_equalizer)
from .processor import register_attention_control
from .tokens import check_prompt_length

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
        from .viz import attention_grid

        imgs = None
        if isinstance(self.images, list):
            imgs = self.images
        elif isinstance(self.images, np.ndarray) and self.images.ndim == 4 and self.images.shape[-1] == 3:
            imgs = (self.images * 255).round().astype(np.uint8)
        return attention_grid(self.controller, self.prompts, self.tokenizer, images=imgs, scale=scale, cell=cell)


def check_scheduler(scheduler):
    name = type(scheduler).__name__
    if name not in SUPPORTED_SCHEDULERS:
        raise ValueError(f"scheduler {name} is not supported for Prompt-to-Prompt (stochastic or several UNet calls per "
                         f"step); use one of {', '.join(SUPPORTED_SCHEDULERS)}")


class Prompt2PromptPipeline:
    """Prompt-to-Prompt on a Stable Diffusion 1.x / 2.x pipeline (epsilon or v-prediction)."""

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, fused: bool = True):
        from .processor import hookable_layers

        hookable_layers(unet)  # UnsupportedModelError early
        self.vae, self.text_encoder, self.tokenizer, self.unet, self.scheduler = vae, text_encoder, tokenizer, unet, scheduler
        self.fused = fused
        self.progress = True

    @classmethod
    def from_pipe(cls, pipe, **kw) -> "Prompt2PromptPipeline":
        for part in ("vae", "text_encoder", "tokenizer", "unet", "scheduler"):
            if getattr(pipe, part, None) is None:
                raise ValueError(f"from_pipe: the pipeline has no {part}; a StableDiffusionPipeline is expected")
        return cls(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet, pipe.scheduler, **kw)

    @classmethod
    def from_pretrained(cls, path: str, torch_dtype=torch.float32, device=None, **kw) -> "Prompt2PromptPipeline":
        """Loads a local diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/,
        scheduler/); never the hub."""
        if not os.path.isdir(path):
            raise FileNotFoundError(f"weights path {path!r} is not a folder (a local diffusers Stable Diffusion folder is expected)")
        if not os.path.exists(os.path.join(path, "model_index.json")):
            raise FileNotFoundError(f"{path!r} has no model_index.json: not a diffusers pipeline folder")
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(path, dtype=torch_dtype, local_files_only=True,
                                                       safety_checker=None, requires_safety_checker=False)
        if device is not None:
            pipe = pipe.to(device)
        return cls.from_pipe(pipe, **kw)

    @property
    def device(self):
        return self.unet.device

    def set_progress_bar_config(self, disable: bool = False):
        self.progress = not disable

    # ---- pieces (also used by inversion / PnP) ------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts) -> torch.Tensor:
        for p in prompts:
            check_prompt_length(p, self.tokenizer)
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.device))[0]

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [-1, 1]."""
        return self.vae.decode(latents / self.vae.config.scaling_factor).sample

    def make_controller(self, prompts, edit_type, num_steps, cross_replace_steps, self_replace_steps, blend_words,
                        equalizer_words, equalizer_strengths, local_blend_kwargs=None, self_min_scale=4,
                        store_scales=(4,)) -> AttentionControl:
        if edit_type not in EDIT_TYPES:
            raise ValueError(f"edit_type must be one of 'replace', 'refine', 'reweight' (or None), got {edit_type!r}")
        tok = self.tokenizer
        if edit_type is None:
            if blend_words is not None or equalizer_words is not None:
                raise ValueError("blend_words / equalizer_words need an edit_type")
            for p in prompts:
                check_prompt_length(p, tok)
            return AttentionStore(len(prompts), store_scales=store_scales)
        if len(prompts) < 2:
            raise ValueError(f"edit_type={edit_type!r} needs a source prompt and at least one target, got {len(prompts)}")
        lb = None
        if blend_words is not None:
            if isinstance(blend_words, str):
                raise ValueError("blend_words: give one word (or list of words) per prompt, e.g. ('cat', 'tiger')")
            lb = LocalBlend(prompts, list(blend_words), tok, num_steps, **(local_blend_kwargs or {}))
        common = dict(local_blend=lb, self_min_scale=self_min_scale, store_scales=store_scales)
        eq = None
        if equalizer_words is not None or edit_type == "reweight":
            if equalizer_words is None or equalizer_strengths is None:
                raise ValueError("reweight: equalizer_words and equalizer_strengths are both needed")
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
        if output_type not in ("pil", "np", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'latent', got {output_type!r}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        check_scheduler(self.scheduler)
        P = len(prompts)
        if controller is None:
            controller = self.make_controller(prompts, edit_type, num_inference_steps, cross_replace_steps,
                                              self_replace_steps, blend_words, equalizer_words, equalizer_strengths,
                                              local_blend_kwargs, self_min_scale, store_scales)
        controller.reset()
        vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        s = self.unet.config.sample_size
        height = height or (s if isinstance(s, int) else s[0]) * vae_scale
        width = width or (s if isinstance(s, int) else s[1]) * vae_scale
        if height % vae_scale or width % vae_scale:
            raise ValueError(f"height and width must be multiples of {vae_scale}, got {height}x{width}")
        shape = (1, self.unet.config.in_channels, height // vae_scale, width // vae_scale)
        dev, dtype = self.device, self.unet.dtype
        if latents is None:
            latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(dev, dtype)
        else:
            latents = torch.as_tensor(latents).to(dev, dtype)
            if latents.dim() != 4 or latents.shape[0] not in (1, P) or latents.shape[1:] != shape[1:]:
                raise ValueError(f"latents have shape {tuple(latents.shape)}, expected [1 or {P}, {shape[1]}, {shape[2]}, {shape[3]}]")
        x = latents.expand(P, *shape[1:]).clone()
        controller.latent_hw = (shape[2], shape[3])

        cond = self.encode_prompts(prompts).to(dtype)
        do_cfg = guidance_scale > 1.0
        self.scheduler.set_timesteps(num_inference_steps, device=dev)
        timesteps = self.scheduler.timesteps
        if uncond_embeddings is None:
            uncond = [self.encode_prompts([""] * P).to(dtype)] * len(timesteps)
        elif isinstance(uncond_embeddings, (list, tuple)):
            if len(uncond_embeddings) < len(timesteps):
                raise ValueError(f"uncond_embeddings: {len(uncond_embeddings)} given for {len(timesteps)} steps")
            uncond = [u.to(dev, dtype).expand(P, *u.shape[1:]) for u in uncond_embeddings]
        else:
            uncond = [uncond_embeddings.to(dev, dtype).expand(P, *uncond_embeddings.shape[1:])] * len(timesteps)
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
        if output_type == "latent":
            images = x
        else:
            img = self.decode_latents(x)
            arr = (img / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
            if output_type == "np":
                images = arr
            else:
                from PIL import Image

                images = [Image.fromarray((a * 255).round().astype(np.uint8)) for a in arr]
        return Prompt2PromptOutput(images=images, latents=x, controller=controller, prompts=prompts, tokenizer=self.tokenizer)
