"""The Stable Diffusion 1.x / 2.x base of the editing pipelines (Prompt-to-Prompt, Plug-and-Play and the
inversions): the components, loading (`from_pipe`, `from_pretrained`: a local folder, never the hub), the
one check that a pipeline is usable, prompt encoding, VAE encoding / decoding and the output conversion
(PIL / np / latent), as diffusers' pipelines name them."""
from __future__ import annotations

import os

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from gsplat_kit.common.errors import UserError

from .processor import UnsupportedModelError, hookable_layers
from .tokens import check_prompt_length

COMPONENTS = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
OUTPUT_TYPES = ("pil", "np", "latent")


def check_pipe(pipe) -> None:
    """The one "is this pipeline usable" check: the five components are there and the UNet is a
    text-conditioned UNet2DConditionModel whose attention layers can be hooked (UnsupportedModelError)."""
    missing = [c for c in COMPONENTS if getattr(pipe, c, None) is None]
    if missing:
        raise UnsupportedModelError(f"the pipeline has no {', '.join(missing)}: a Stable Diffusion pipeline "
                                    f"(SD 1.x / 2.x) is needed")
    hookable_layers(pipe.unet)


def check_output_type(output_type: str) -> None:
    if output_type not in OUTPUT_TYPES:
        raise UserError(f"output_type must be 'pil', 'np' or 'latent', got {output_type!r}")


def load_pretrained(path, torch_dtype=torch.float32, device=None, what: str = "weights path") -> StableDiffusionPipeline:
    """The diffusers StableDiffusionPipeline in the local folder `path` (model_index.json, unet/, vae/,
    text_encoder/, tokenizer/, scheduler/); errors name `what` (e.g. "--model")."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} {path}: not a folder (no such folder); a local diffusers Stable Diffusion "
                                f"folder is expected")
    if not os.path.exists(os.path.join(path, "model_index.json")):
        raise FileNotFoundError(f"{what} {path}: no model_index.json, not a diffusers pipeline folder")
    try:
        pipe = StableDiffusionPipeline.from_pretrained(path, dtype=torch_dtype, local_files_only=True,
                                                       safety_checker=None, requires_safety_checker=False)
    except (OSError, ValueError) as e:  # missing or unreadable weights, wrong config
        raise UserError(f"{what} {path}: cannot load the weights ({' '.join(str(e).split())[:300]})") from None
    return pipe if device is None else pipe.to(device)


def load_image(image, height: int, width: int) -> torch.Tensor:
    """A path / PIL image / HxWx3 uint8 array -> [1, 3, height, width] in [-1, 1], centre-cropped to the
    aspect ratio, then resized (null_text_w_ptp's load_512, for any size)."""
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such image")
        try:
            image = Image.open(path)
            image.load()
        except Exception as e:  # PIL raises several types for bad files
            raise UserError(f"{path}: not a readable image ({' '.join(str(e).split())[:200]})") from None
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise UserError(f"image array must be HxWx3, got shape {image.shape}")
        image = Image.fromarray(image[..., :3].astype(np.uint8))
    if not isinstance(image, Image.Image):
        raise UserError(f"image must be a path, PIL image or HxWx3 array, got {type(image).__name__}")
    image = image.convert("RGB")
    w0, h0 = image.size
    target = width / height
    if w0 / h0 > target:
        cw = int(round(h0 * target))
        box = ((w0 - cw) // 2, 0, (w0 - cw) // 2 + cw, h0)
    else:
        ch = int(round(w0 / target))
        box = (0, (h0 - ch) // 2, w0, (h0 - ch) // 2 + ch)
    image = image.crop(box).resize((width, height), Image.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]


class StableDiffusionBase:
    """A Stable Diffusion 1.x / 2.x (epsilon or v-prediction) as the editing pipelines use it.

    `fused`: attention layers run through the native kernel (else the pure-PyTorch reference)."""

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, fused: bool = True):
        self.vae, self.text_encoder, self.tokenizer, self.unet, self.scheduler = vae, text_encoder, tokenizer, unet, scheduler
        check_pipe(self)
        self.fused = fused
        self.progress = True

    @classmethod
    def from_pipe(cls, pipe, **kw):
        """Shares the components of `pipe` (a diffusers StableDiffusionPipeline, or one of ours)."""
        return cls(**{c: getattr(pipe, c, None) for c in COMPONENTS}, **kw)

    @classmethod
    def from_pretrained(cls, path, torch_dtype=torch.float32, device=None, **kw):
        """Loads a local diffusers folder (see `load_pretrained`); never the hub."""
        return cls.from_pipe(load_pretrained(path, torch_dtype, device), **kw)

    @staticmethod
    def of(pipe) -> StableDiffusionBase:
        """`pipe` itself when it is one of ours, else a base over its components (for functions that take
        either a diffusers pipeline or ours)."""
        return pipe if isinstance(pipe, StableDiffusionBase) else StableDiffusionBase.from_pipe(pipe)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def set_progress_bar_config(self, disable: bool = False):
        self.progress = not disable

    # ---- sizes ----------------------------------------------------------------------------------------
    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def latent_size(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """(h, w) of the latent of a height x width image (default: the model's own size)."""
        scale = self.vae_scale_factor
        s = self.unet.config.sample_size
        s = (s, s) if isinstance(s, int) else tuple(s)
        height = height or s[0] * scale
        width = width or s[1] * scale
        if height % scale or width % scale:
            raise UserError(f"height and width must be multiples of {scale}, got {height}x{width}")
        return height // scale, width // scale

    # ---- text, images, latents --------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts) -> torch.Tensor:
        """[N, L, C] text embeddings in the UNet's dtype; a prompt the tokenizer would truncate is an error."""
        tok = self.tokenizer
        for p in prompts:
            check_prompt_length(p, tok)
        ids = tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.device))[0].to(self.dtype)

    @torch.no_grad()
    def encode_image(self, image, height: int | None = None, width: int | None = None) -> torch.Tensor:
        """Image (path, PIL, array or [1, 3, H, W] in [-1, 1]) -> x_0 latent [1, C, h, w] in the UNet's
        dtype (the VAE posterior mean times the scaling factor)."""
        h, w = self.latent_size(height, width)
        s = self.vae_scale_factor
        x = image if isinstance(image, torch.Tensor) else load_image(image, h * s, w * s)
        x = x.to(device=self.vae.device, dtype=self.vae.dtype)
        return (self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor).to(self.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """[N, C, h, w] latents -> [N, H, W, 3] float images in [0, 1]."""
        img = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return (img / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()

    def output(self, latents: torch.Tensor, output_type: str = "pil"):
        """The pipelines' `images`: the latents themselves, [N, H, W, 3] floats in [0, 1], or PIL images."""
        check_output_type(output_type)
        if output_type == "latent":
            return latents
        arr = self.decode(latents)
        if output_type == "np":
            return arr
        return [Image.fromarray((a * 255).round().astype(np.uint8)) for a in arr]
