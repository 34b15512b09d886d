"""`gsplat-kit edit`, `gsplat-kit invert`, `gsplat-kit pnp`: Prompt-to-Prompt editing (generated or real
images), inversion of real images, and Plug-and-Play translation, on a local Stable Diffusion folder.

Each writes an output folder: the images, `attention.png` (per-token cross-attention heat maps; edit),
and `settings.json` (every resolved setting). torch / diffusers are imported inside the handlers.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


class CLIError(ValueError):
    """Bad command-line input (reported without a traceback, exit status 2)."""


def _common(p: argparse.ArgumentParser, out_default: str):
    p.add_argument("--model", required=True, help="local diffusers Stable Diffusion 1.x / 2.x folder (model_index.json)")
    p.add_argument("--out", default=out_default, help=f"output folder (default {out_default})")
    p.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the starting noise (default 0)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when a GPU is visible)")
    p.add_argument("--fp16", action="store_true", help="half-precision weights (GPU)")
    p.add_argument("--height", type=int, default=None, help="image height (default: the model's)")
    p.add_argument("--width", type=int, default=None, help="image width (default: the model's)")


def register(subparsers):
    e = subparsers.add_parser(
        "edit", help="Prompt-to-Prompt: edit an image by editing its prompt",
        description="Prompt-to-Prompt (Hertz et al. 2023) through gsplat_kit's fused attention kernel. Without --image the "
                    "source image is generated from --source; with --image (or --inversion) a real photo is inverted "
                    "first (null-text inversion by default) and edited.",
        epilog='example: gsplat-kit edit --model sd15/ --image photo.jpg --source "a cat sitting next to a mirror" '
               '--target "a tiger sitting next to a mirror" --out out/tiger',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _common(e, "out/edit")
    e.add_argument("--source", required=True, help="the source prompt (prompt 0)")
    e.add_argument("--target", required=True, action="append", help="a target prompt (repeat for several)")
    e.add_argument("--edit-type", default="replace", choices=["replace", "refine", "reweight"],
                   help="word swap (same word count), refinement (added words), or re-weighting only")
    e.add_argument("--cross-replace-steps", default="0.8",
                   help="fraction of steps with injected cross maps: 0.8, or a window 0.1,0.8, or per word "
                        "'default_=0.8;tiger=0.4'")
    e.add_argument("--self-replace-steps", default="0.4", help="fraction (or window a,b) of steps with injected self maps")
    e.add_argument("--self-min-scale", type=float, default=None,
                   help="self maps are injected at layers of latent/s with s >= this (default 4; 2 for real images, "
                        "as the null-text notebook)")
    e.add_argument("--blend-words", nargs="+", default=None, metavar="WORDS",
                   help="LocalBlend: one entry per prompt (source first); several words for one prompt as a,b")
    e.add_argument("--blend-threshold", type=float, default=0.3, help="LocalBlend mask threshold")
    e.add_argument("--equalizer", nargs="+", default=None, metavar="WORD=SCALE",
                   help="re-weighting: scale a target word's attention, e.g. smiling=4 (negative allowed)")
    e.add_argument("--map-scale", type=float, default=4,
                   help="LocalBlend and attention.png use the cross-attention maps at latent/s (16x16 for 512 px)")
    e.add_argument("--image", default=None, help="edit this photo (inverted first)")
    e.add_argument("--inversion", default=None, help="edit from a saved inversion (inversion.pt from `gsplat-kit invert`)")
    e.add_argument("--inversion-method", default="null-text", choices=["null-text", "negative-prompt", "ddim"])
    e.add_argument("--no-fused", action="store_true", help="use the pure-PyTorch reference attention instead of the kernel")
    e.set_defaults(func=run_edit)

    i = subparsers.add_parser(
        "invert", help="invert a photo into Stable Diffusion's latent trajectory (DDIM / null-text / negative-prompt)",
        description="DDIM inversion, null-text inversion (Mokady et al. 2023) or negative-prompt inversion (Miyake et "
                    "al. 2023). Writes inversion.pt (for `edit --inversion`), reconstruction.png and settings.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _common(i, "out/invert")
    i.add_argument("--image", required=True, help="the photo")
    i.add_argument("--prompt", required=True, help="a caption of the photo (the source prompt)")
    i.add_argument("--method", default="null-text", choices=["null-text", "negative-prompt", "ddim"])
    i.add_argument("--inner-steps", type=int, default=10, help="null-text: Adam steps per denoising step")
    i.set_defaults(func=run_invert)

    p = subparsers.add_parser(
        "pnp", help="Plug-and-Play: translate a photo by a prompt, keeping its structure",
        description="Plug-and-Play diffusion features (Tumanyan et al. 2023): DDIM inversion of the photo, then "
                    "sampling with the prompt while the photo's decoder features (first --pnp-f-t of the steps) and "
                    "self-attention maps (first --pnp-attn-t) are injected.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _common(p, "out/pnp")
    p.add_argument("--image", required=True, help="the guidance photo")
    p.add_argument("--prompt", required=True, help="the target prompt")
    p.add_argument("--negative-prompt", default="", help="negative prompt")
    p.add_argument("--inversion-prompt", default="", help="prompt used to invert the photo")
    p.add_argument("--inversion-steps", type=int, default=None,
                   help="DDIM inversion steps (default: --steps; pnp-diffusers uses 1000, slower and more faithful)")
    p.add_argument("--pnp-f-t", type=float, default=0.8, help="fraction of steps with feature injection")
    p.add_argument("--pnp-attn-t", type=float, default=0.5, help="fraction of steps with self-attention injection")
    p.add_argument("--feature-layers", nargs="+", default=["up_blocks.1.resnets.1"], help="UNet modules whose output is injected")
    p.add_argument("--attn-layers", nargs="+", default=None,
                   help="self-attention layers (attn1) to inject (default: the decoder's, but the first)")
    p.set_defaults(func=run_pnp)


# ---- helpers --------------------------------------------------------------------------------------------

def _fail(msg: str) -> int:
    print(f"gsplat-kit: error: {msg}", file=sys.stderr)
    return 2


def _guard(fn):
    """Runs a handler; bad input (ValueError / FileNotFoundError / NativeBuildError) -> message, exit 2."""
    def run(args):
        from gsplat_kit._backend import NativeBuildError

        try:
            return fn(args)
        except (ValueError, FileNotFoundError, NativeBuildError) as e:
            return _fail(str(e))
    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run


def parse_steps(text: str, what: str):
    """'0.8' -> 0.8; '0.1,0.8' -> (0.1, 0.8); 'default_=0.8;tiger=0.1,0.5' -> dict (cross only)."""
    def one(s):
        parts = [x.strip() for x in s.split(",")]
        try:
            vals = [float(x) for x in parts]
        except ValueError:
            raise CLIError(f"{what}: {s!r} is not a number or a pair a,b") from None
        if len(vals) == 1:
            return vals[0]
        if len(vals) == 2:
            return tuple(vals)
        raise CLIError(f"{what}: {s!r} has {len(vals)} numbers (one, or a pair a,b)")
    text = text.strip()
    if "=" in text:
        out = {}
        for item in text.split(";"):
            if not item.strip():
                continue
            if "=" not in item:
                raise CLIError(f"{what}: {item!r} is not WORD=STEPS")
            k, v = item.split("=", 1)
            out[k.strip()] = one(v)
        return out
    return one(text)


def _device(args):
    import torch

    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError("--device cuda: no GPU is visible")
    dtype = torch.float16 if args.fp16 else torch.float32
    if args.fp16 and not dev.startswith("cuda"):
        raise CLIError("--fp16 needs a GPU")
    return dev, dtype


def _load_sd(args):
    """The local StableDiffusionPipeline at --model (never the hub)."""
    import torch

    path = args.model
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--model {path}: no such folder (a local diffusers Stable Diffusion folder is expected)")
    if not os.path.exists(os.path.join(path, "model_index.json")):
        raise FileNotFoundError(f"--model {path}: no model_index.json, not a diffusers pipeline folder")
    from diffusers import StableDiffusionPipeline

    dev, dtype = _device(args)
    try:
        sd = StableDiffusionPipeline.from_pretrained(path, dtype=dtype, local_files_only=True, safety_checker=None,
                                                     requires_safety_checker=False)
    except (OSError, EnvironmentError) as e:
        raise FileNotFoundError(f"--model {path}: cannot load the weights ({e})") from e
    sd.set_progress_bar_config(disable=True)
    torch.manual_seed(args.seed)
    return sd.to(dev)


def _prepare_out(path: str):
    os.makedirs(path, exist_ok=True)
    return path


def _save_png(img, path: str):
    """PIL image -> PNG, atomically."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp{os.getpid()}.png")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)


def _save_json(obj, path: str):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
    os.replace(tmp, path)


def _to_pil(images):
    from PIL import Image
    import numpy as np

    return [im if isinstance(im, Image.Image) else Image.fromarray((np.asarray(im) * 255).round().astype(np.uint8))
            for im in images]


def _row(images):
    """Images side by side."""
    from PIL import Image

    w = sum(im.width for im in images)
    h = max(im.height for im in images)
    out = Image.new("RGB", (w, h), "white")
    x = 0
    for im in images:
        out.paste(im, (x, 0))
        x += im.width
    return out


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")
    return "_".join(filter(None, keep.split("_")))[:60] or "prompt"


# ---- handlers -------------------------------------------------------------------------------------------

@_guard
def run_edit(args) -> int:
    """gsplat-kit edit"""
    import torch

    from . import inversion as inv
    from .pipeline import Prompt2PromptPipeline

    prompts = [args.source] + list(args.target)
    cross = parse_steps(args.cross_replace_steps, "--cross-replace-steps")
    self_steps = parse_steps(args.self_replace_steps, "--self-replace-steps")
    if isinstance(self_steps, dict):
        raise CLIError("--self-replace-steps takes a fraction or a window a,b, not per-word values")
    blend = None
    if args.blend_words is not None:
        if len(args.blend_words) != len(prompts):
            raise CLIError(f"--blend-words: {len(args.blend_words)} entries for {len(prompts)} prompts (one per prompt, source first)")
        blend = [w.split(",") if "," in w else w for w in args.blend_words]
    eq_words = eq_vals = None
    if args.equalizer:
        eq_words, eq_vals = [], []
        for item in args.equalizer:
            if "=" not in item:
                raise CLIError(f"--equalizer: {item!r} is not WORD=SCALE")
            w, v = item.split("=", 1)
            try:
                eq_vals.append(float(v))
            except ValueError:
                raise CLIError(f"--equalizer: {v!r} is not a number") from None
            eq_words.append(w.strip())
    if args.edit_type == "reweight" and not eq_words:
        raise CLIError("--edit-type reweight needs --equalizer WORD=SCALE")
    if args.image and args.inversion:
        raise CLIError("give --image or --inversion, not both")
    if args.steps < 1:
        raise CLIError(f"--steps must be >= 1, got {args.steps}")
    if args.image and not os.path.exists(args.image):
        raise FileNotFoundError(f"--image {args.image}: no such file")

    sd = _load_sd(args)
    p2p = Prompt2PromptPipeline.from_pipe(sd, fused=not args.no_fused)
    real = bool(args.image or args.inversion)
    out = _prepare_out(args.out)
    settings = dict(verb="edit", prompts=prompts, edit_type=args.edit_type, cross_replace_steps=cross,
                    self_replace_steps=self_steps, blend_words=blend, blend_threshold=args.blend_threshold,
                    equalizer_words=eq_words, equalizer_strengths=eq_vals, num_inference_steps=args.steps,
                    guidance_scale=args.guidance, seed=args.seed, model=os.path.abspath(args.model),
                    device=str(sd.unet.device), dtype=str(sd.unet.dtype), fused=not args.no_fused)
    kw = {}
    if real:
        p2p.scheduler = inv.ddim_scheduler(sd)  # the inversion's scheduler
        if args.inversion:
            res = inv.InversionResult.load(args.inversion)
            if res.prompt != args.source:
                print(f"note: the inversion was made with the prompt {res.prompt!r}", file=sys.stderr)
            if len(res.uncond_embeddings) != args.steps:
                raise CLIError(f"--inversion has {len(res.uncond_embeddings)} steps but --steps is {args.steps}")
        else:
            t0 = time.time()
            res = inv.invert(sd, args.image, args.source, method=args.inversion_method, num_inference_steps=args.steps,
                             guidance_scale=args.guidance, height=args.height, width=args.width)
            settings["inversion_seconds"] = round(time.time() - t0, 2)
            res.save(os.path.join(out, "inversion.pt"))
        dev, dtype = sd.unet.device, sd.unet.dtype
        kw = dict(latents=res.latents.to(dev, dtype), uncond_embeddings=[u.to(dev, dtype) for u in res.uncond_embeddings])
        settings.update(image=args.image, inversion=args.inversion, inversion_method=res.method)
    self_min = args.self_min_scale if args.self_min_scale is not None else (2 if real else 4)
    settings["self_min_scale"] = self_min
    lb_kw = {"threshold": args.blend_threshold, "map_scale": args.map_scale} if blend else None
    settings["map_scale"] = args.map_scale
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    result = p2p(prompts, edit_type=args.edit_type, cross_replace_steps=cross, self_replace_steps=self_steps,
                 blend_words=blend, equalizer_words=eq_words, equalizer_strengths=eq_vals,
                 num_inference_steps=args.steps, guidance_scale=args.guidance, generator=gen, output_type="pil",
                 height=args.height, width=args.width, local_blend_kwargs=lb_kw, self_min_scale=self_min,
                 store_scales=(args.map_scale,), **kw)
    settings["edit_seconds"] = round(time.time() - t0, 2)
    images = _to_pil(result.images)
    files = []
    for k, (prompt, im) in enumerate(zip(prompts, images)):
        name = f"{k:02d}_{'source' if k == 0 else 'target'}_{_slug(prompt)}.png"
        _save_png(im, os.path.join(out, name))
        files.append(name)
    _save_png(_row(images), os.path.join(out, "grid.png"))
    try:
        _save_png(result.attention_grid(), os.path.join(out, "attention.png"))
        files.append("attention.png")
    except ValueError as e:  # no cross layer at the stored resolution (tiny models)
        print(f"note: no attention grid: {e}", file=sys.stderr)
    settings["files"] = files + ["grid.png"]
    _save_json(settings, os.path.join(out, "settings.json"))
    print(f"wrote {len(images)} images, grid.png{', attention.png' if 'attention.png' in files else ''} and settings.json to {out}")
    return 0


@_guard
def run_invert(args) -> int:
    """gsplat-kit invert"""
    from . import inversion as inv

    if not os.path.exists(args.image):
        raise FileNotFoundError(f"--image {args.image}: no such file")
    if args.steps < 1:
        raise CLIError(f"--steps must be >= 1, got {args.steps}")
    sd = _load_sd(args)
    out = _prepare_out(args.out)
    t0 = time.time()
    res = inv.invert(sd, args.image, args.prompt, method=args.method, num_inference_steps=args.steps,
                     guidance_scale=args.guidance, num_inner_steps=args.inner_steps, height=args.height, width=args.width)
    secs = time.time() - t0
    res.save(os.path.join(out, "inversion.pt"))
    rec = inv.reconstruct(sd, res, progress=True)
    x0 = res.trajectory[0]
    err = (rec - x0).float().pow(2).mean().sqrt().item()
    images = _to_pil(inv.decode_latents(sd, torch_cat(x0, rec)))
    _save_png(_row(images), os.path.join(out, "reconstruction.png"))
    _save_json(dict(verb="invert", image=args.image, prompt=args.prompt, method=args.method, num_inference_steps=args.steps,
                    guidance_scale=args.guidance, inner_steps=args.inner_steps, model=os.path.abspath(args.model),
                    seconds=round(secs, 2), latent_rmse=err, null_text_losses=res.losses,
                    files=["inversion.pt", "reconstruction.png"]), os.path.join(out, "settings.json"))
    print(f"inverted {args.image} ({args.method}, {args.steps} steps, {secs:.1f} s); reconstruction latent RMSE {err:.4f}; "
          f"wrote inversion.pt, reconstruction.png (input | reconstruction), settings.json to {out}")
    return 0


def torch_cat(*xs):
    import torch

    return torch.cat(xs)


@_guard
def run_pnp(args) -> int:
    """gsplat-kit pnp"""
    from .pnp import PlugAndPlayPipeline
    from . import inversion as inv

    if not os.path.exists(args.image):
        raise FileNotFoundError(f"--image {args.image}: no such file")
    if args.steps < 1:
        raise CLIError(f"--steps must be >= 1, got {args.steps}")
    if args.inversion_steps is not None and args.inversion_steps < 1:
        raise CLIError(f"--inversion-steps must be >= 1, got {args.inversion_steps}")
    sd = _load_sd(args)
    out = _prepare_out(args.out)
    pp = PlugAndPlayPipeline.from_pipe(sd)
    t0 = time.time()
    res = pp(args.image, args.prompt, negative_prompt=args.negative_prompt, inversion_prompt=args.inversion_prompt,
             num_inference_steps=args.steps, inversion_steps=args.inversion_steps, guidance_scale=args.guidance,
             pnp_f_t=args.pnp_f_t, pnp_attn_t=args.pnp_attn_t, feature_layers=tuple(args.feature_layers),
             attn_layers=args.attn_layers, height=args.height, width=args.width, output_type="pil")
    secs = time.time() - t0
    source = _to_pil(inv.decode_latents(sd, res.inversion.trajectory[0]))[0]
    _save_png(res.images[0], os.path.join(out, f"pnp_{_slug(args.prompt)}.png"))
    _save_png(_row([source, res.images[0]]), os.path.join(out, "grid.png"))
    _save_json(dict(verb="pnp", image=args.image, prompt=args.prompt, negative_prompt=args.negative_prompt,
                    inversion_prompt=args.inversion_prompt, num_inference_steps=args.steps,
                    inversion_steps=args.inversion_steps or args.steps, guidance_scale=args.guidance,
                    pnp_f_t=args.pnp_f_t, pnp_attn_t=args.pnp_attn_t, feature_layers=args.feature_layers,
                    attn_layers=args.attn_layers, seed=args.seed, model=os.path.abspath(args.model), seconds=round(secs, 2)),
               os.path.join(out, "settings.json"))
    print(f"wrote pnp_{_slug(args.prompt)}.png, grid.png (photo | translation) and settings.json to {out}")
    return 0
