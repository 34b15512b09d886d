"""`gsplat-kit edit`, `gsplat-kit invert`, `gsplat-kit pnp`: Prompt-to-Prompt editing (generated or real
images), inversion of real images, and Plug-and-Play translation, on a local Stable Diffusion folder.

Each claims its output folder for one run (`common.run_folder`: a folder holding another run is refused
unless --overwrite, which replaces it when the new run finishes) and writes the images, `attention.png`
(per-token cross-attention heat maps; edit) and `settings.json` (every resolved setting), each atomically.
Every numeric option is range-checked while the command line is parsed. torch / diffusers are imported
inside the handlers, so that `gsplat-kit --help` stays fast.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from gsplat_kit.common.atomic import atomic_path, write_json
from gsplat_kit.common.errors import UserError
from gsplat_kit.common.options import check_range, ranged
from gsplat_kit.common.run_folder import RunFolder

MAX_STEPS = 1000  # the DDPM schedule Stable Diffusion was trained with has 1000 timesteps
MAX_SIDE = 8192


class CLIError(UserError):
    """Bad command-line input (one line on stderr, exit status 2)."""


def _common(p: argparse.ArgumentParser, out_default: str):
    p.add_argument("--model", required=True, help="local diffusers Stable Diffusion 1.x / 2.x folder (model_index.json)")
    p.add_argument("--out", default=out_default, help=f"output folder (default {out_default}); it holds one run")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (its files are removed when the new run finishes)")
    p.add_argument("--steps", type=ranged(int, lo=1, hi=MAX_STEPS), default=50, help="denoising steps (default 50)")
    p.add_argument("--guidance", type=ranged(float, lo=0), default=7.5,
                   help="classifier-free guidance scale (default 7.5; <= 1 turns guidance off)")
    p.add_argument("--seed", type=ranged(int, lo=0, hi=2 ** 63 - 1), default=0, help="seed of the starting noise (default 0)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when a GPU is visible)")
    p.add_argument("--fp16", action="store_true", help="half-precision weights (GPU)")
    side = ranged(int, lo=8, hi=MAX_SIDE)
    p.add_argument("--height", type=side, default=None, help="image height (default: the model's)")
    p.add_argument("--width", type=side, default=None, help="image width (default: the model's)")


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
    e.add_argument("--cross-replace-steps", default="0.8", type=_steps_type("--cross-replace-steps", per_word=True),
                   help="fraction of steps with injected cross maps: 0.8, or a window 0.1,0.8, or per word "
                        "'default_=0.8;tiger=0.4'")
    e.add_argument("--self-replace-steps", default="0.4", type=_steps_type("--self-replace-steps", per_word=False),
                   help="fraction (or window a,b) of steps with injected self maps")
    e.add_argument("--self-min-scale", type=ranged(float, lo=0, lo_open=True), default=None,
                   help="self maps are injected at layers of latent/s with s >= this (default 4; 2 for real images, "
                        "as the null-text notebook)")
    e.add_argument("--blend-words", nargs="+", default=None, metavar="WORDS",
                   help="LocalBlend: one entry per prompt (source first); several words for one prompt as a,b")
    e.add_argument("--blend-threshold", type=ranged(float, lo=0, hi=1), default=0.3, help="LocalBlend mask threshold")
    e.add_argument("--equalizer", nargs="+", default=None, metavar="WORD=SCALE", type=_word_scale,
                   help="re-weighting: scale a target word's attention, e.g. smiling=4 (negative allowed)")
    e.add_argument("--map-scale", type=ranged(float, lo=1), default=4,
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
    i.add_argument("--inner-steps", type=ranged(int, lo=1, hi=MAX_STEPS), default=10,
                   help="null-text: Adam steps per denoising step")
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
    p.add_argument("--inversion-steps", type=ranged(int, lo=1, hi=MAX_STEPS), default=None,
                   help="DDIM inversion steps (default: --steps; pnp-diffusers uses 1000, slower and more faithful)")
    fraction = ranged(float, lo=0, hi=1)
    p.add_argument("--pnp-f-t", type=fraction, default=0.8, help="fraction of steps with feature injection")
    p.add_argument("--pnp-attn-t", type=fraction, default=0.5, help="fraction of steps with self-attention injection")
    p.add_argument("--feature-layers", nargs="+", default=["up_blocks.1.resnets.1"], help="UNet modules whose output is injected")
    p.add_argument("--attn-layers", nargs="+", default=None,
                   help="self-attention layers (attn1) to inject (default: the decoder's, but the first)")
    p.set_defaults(func=run_pnp)


# ---- parsing --------------------------------------------------------------------------------------------

def parse_steps(text: str, what: str):
    """'0.8' -> 0.8; '0.1,0.8' -> (0.1, 0.8); 'default_=0.8;tiger=0.1,0.5' -> dict (cross only). Every
    value is a fraction of the steps in [0, 1], a window's start at most its end."""
    def one(s):
        parts = [x.strip() for x in s.split(",")]
        try:
            vals = [float(x) for x in parts]
        except ValueError:
            raise CLIError(f"{what}: {s!r} is not a number or a pair a,b") from None
        if len(vals) > 2:
            raise CLIError(f"{what}: {s!r} has {len(vals)} numbers (one, or a pair a,b)")
        for v in vals:
            check_range(f"{what}: fraction", v, lo=0, hi=1)
        if len(vals) == 2 and vals[0] > vals[1]:
            raise CLIError(f"{what}: the window {s!r} starts after it ends")
        return vals[0] if len(vals) == 1 else tuple(vals)
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


def _steps_type(what: str, per_word: bool):
    def parse(text: str):
        try:
            steps = parse_steps(text, what)
        except UserError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix(f"{what}: ")) from None  # argparse names it
        if isinstance(steps, dict) and not per_word:
            raise argparse.ArgumentTypeError("takes a fraction or a window a,b, not per-word values")
        return steps
    parse.__name__ = "steps"
    return parse


def _word_scale(text: str) -> tuple[str, float]:
    """--equalizer WORD=SCALE -> (word, finite scale)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not WORD=SCALE")
    w, v = text.split("=", 1)
    try:
        value = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r} is not a number") from None
    try:
        check_range(f"the scale of {w.strip()!r}", value)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return w.strip(), value


# ---- helpers --------------------------------------------------------------------------------------------

def _device(args):
    import torch

    try:
        dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise CLIError(f"--device {args.device}: not a device (cpu, cuda, cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {args.device}: no GPU is visible")
    if args.fp16 and dev.type != "cuda":
        raise CLIError("--fp16 needs a GPU")
    return dev, (torch.float16 if args.fp16 else torch.float32)


def _require_kernel():
    """The fused attention needs the native module: a missing or stale build is setup, not a bug."""
    from gsplat_kit._backend import NativeBuildError, load

    try:
        load()
    except NativeBuildError as e:
        raise UserError(str(e)) from None


def _check_image(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--image {path}: no such file")


def _load_sd(args, dev, dtype):
    """The local Stable Diffusion at --model (never the hub), as a diffusers pipeline."""
    import diffusers
    import torch
    import transformers

    from .stable_diffusion import load_pretrained

    # their loading notes and bars (e.g. "install accelerate") would bury the one line of a later error
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    pipe = load_pretrained(args.model, dtype, dev, what="--model")
    torch.manual_seed(args.seed)
    return pipe


def _save_png(image, path: Path):
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


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

def run_edit(args) -> int:
    """gsplat-kit edit"""
    import torch

    from . import inversion as inv
    from .pipeline import Prompt2PromptPipeline
    from .stable_diffusion import StableDiffusionBase

    prompts = [args.source] + list(args.target)
    cross, self_steps = args.cross_replace_steps, args.self_replace_steps
    blend = None
    if args.blend_words is not None:
        if len(args.blend_words) != len(prompts):
            raise CLIError(f"--blend-words: {len(args.blend_words)} entries for {len(prompts)} prompts (one per prompt, source first)")
        blend = [w.split(",") if "," in w else w for w in args.blend_words]
    eq_words = [w for w, _ in args.equalizer] if args.equalizer else None
    eq_vals = [v for _, v in args.equalizer] if args.equalizer else None
    if args.edit_type == "reweight" and not eq_words:
        raise CLIError("--edit-type reweight needs --equalizer WORD=SCALE")
    if args.image and args.inversion:
        raise CLIError("give --image or --inversion, not both")
    if args.image:
        _check_image(args.image)
    res = None
    if args.inversion:
        res = inv.InversionResult.load(args.inversion)
        if len(res.uncond_embeddings) != args.steps:
            raise CLIError(f"--inversion {args.inversion} has {len(res.uncond_embeddings)} steps but --steps is {args.steps}")
        if res.prompt != args.source:
            print(f"note: the inversion was made with the prompt {res.prompt!r}", file=sys.stderr)
    dev, dtype = _device(args)
    if not args.no_fused:
        _require_kernel()

    sd = StableDiffusionBase.from_pipe(_load_sd(args, dev, dtype))
    p2p = Prompt2PromptPipeline.from_pipe(sd, fused=not args.no_fused)
    real = bool(args.image or args.inversion)
    self_min = args.self_min_scale if args.self_min_scale is not None else (2 if real else 4)
    lb_kw = {"threshold": args.blend_threshold, "map_scale": args.map_scale} if blend else None
    # what can be wrong with the prompts, words and photo is found before the output folder is claimed
    controller = p2p.make_controller(prompts, args.edit_type, args.steps, cross, self_steps, blend, eq_words, eq_vals,
                                     lb_kw, self_min, (args.map_scale,))
    x0 = sd.encode_image(args.image, args.height, args.width) if args.image else None
    if res is not None:
        fits = (tuple(res.latents.shape[1:]) == (sd.unet.config.in_channels, *sd.latent_size(args.height, args.width))
                and res.uncond_embeddings[0].shape[1:] == sd.encode_prompts([""]).shape[1:])
        if not fits:
            raise CLIError(f"--inversion {args.inversion}: made with another model or image size (latents "
                           f"{tuple(res.latents.shape)}, embeddings {tuple(res.uncond_embeddings[0].shape)})")
    settings = dict(verb="edit", prompts=prompts, edit_type=args.edit_type, cross_replace_steps=cross,
                    self_replace_steps=self_steps, blend_words=blend, blend_threshold=args.blend_threshold,
                    equalizer_words=eq_words, equalizer_strengths=eq_vals, num_inference_steps=args.steps,
                    guidance_scale=args.guidance, seed=args.seed, model=os.path.abspath(args.model),
                    device=str(sd.device), dtype=str(sd.dtype), fused=not args.no_fused)
    with RunFolder.claim(args.out, "edit", overwrite=args.overwrite, resumable=False) as run:
        out = run.path
        kw = {}
        if real:
            p2p.scheduler = inv.ddim_scheduler(sd)  # the inversion's scheduler
            if res is None:
                t0 = time.time()
                res = inv.invert(sd, x0, args.source, method=args.inversion_method, num_inference_steps=args.steps,
                                 guidance_scale=args.guidance, height=args.height, width=args.width)
                settings["inversion_seconds"] = round(time.time() - t0, 2)
                res.save(out / "inversion.pt")
            kw = dict(latents=res.latents.to(dev, dtype), uncond_embeddings=[u.to(dev, dtype) for u in res.uncond_embeddings])
            settings.update(image=args.image, inversion=args.inversion, inversion_method=res.method)
        settings.update(self_min_scale=self_min, map_scale=args.map_scale)
        gen = torch.Generator().manual_seed(args.seed)
        t0 = time.time()
        result = p2p(prompts, controller=controller, num_inference_steps=args.steps, guidance_scale=args.guidance,
                     generator=gen, output_type="pil", height=args.height, width=args.width, **kw)
        settings["edit_seconds"] = round(time.time() - t0, 2)
        files = []
        for k, (prompt, im) in enumerate(zip(prompts, result.images)):
            name = f"{k:02d}_{'source' if k == 0 else 'target'}_{_slug(prompt)}.png"
            _save_png(im, out / name)
            files.append(name)
        _save_png(_row(result.images), out / "grid.png")
        try:
            _save_png(result.attention_grid(), out / "attention.png")
            files.append("attention.png")
        except UserError as e:  # no cross layer at the stored resolution (tiny models)
            print(f"note: no attention grid: {e}", file=sys.stderr)
        settings["files"] = files + ["grid.png"]
        write_json(out / "settings.json", settings)
    print(f"wrote {len(prompts)} images, grid.png{', attention.png' if 'attention.png' in files else ''} and "
          f"settings.json to {args.out}")
    return 0


def run_invert(args) -> int:
    """gsplat-kit invert"""
    import torch

    from . import inversion as inv
    from .stable_diffusion import StableDiffusionBase

    _check_image(args.image)
    dev, dtype = _device(args)
    sd = StableDiffusionBase.from_pipe(_load_sd(args, dev, dtype))
    sd.encode_prompts([args.prompt])  # a prompt too long is found before the output folder is claimed
    x0 = sd.encode_image(args.image, args.height, args.width)
    with RunFolder.claim(args.out, "invert", overwrite=args.overwrite, resumable=False) as run:
        t0 = time.time()
        res = inv.invert(sd, x0, args.prompt, method=args.method, num_inference_steps=args.steps,
                         guidance_scale=args.guidance, num_inner_steps=args.inner_steps, height=args.height,
                         width=args.width)
        secs = time.time() - t0
        res.save(run.path / "inversion.pt")
        rec = inv.reconstruct(sd, res, progress=True)
        x0 = res.trajectory[0]
        err = (rec - x0).float().pow(2).mean().sqrt().item()
        _save_png(_row(sd.output(torch.cat([x0, rec]), "pil")), run.path / "reconstruction.png")
        write_json(run.path / "settings.json",
                   dict(verb="invert", image=args.image, prompt=args.prompt, method=args.method,
                        num_inference_steps=args.steps, guidance_scale=args.guidance, inner_steps=args.inner_steps,
                        model=os.path.abspath(args.model), seconds=round(secs, 2), latent_rmse=err,
                        null_text_losses=res.losses, files=["inversion.pt", "reconstruction.png"]))
    print(f"inverted {args.image} ({args.method}, {args.steps} steps, {secs:.1f} s); reconstruction latent RMSE {err:.4f}; "
          f"wrote inversion.pt, reconstruction.png (input | reconstruction), settings.json to {args.out}")
    return 0


def run_pnp(args) -> int:
    """gsplat-kit pnp"""
    from .pnp import PlugAndPlayPipeline

    _check_image(args.image)
    dev, dtype = _device(args)
    _require_kernel()
    pp = PlugAndPlayPipeline.from_pipe(_load_sd(args, dev, dtype))
    # what can be wrong with the layers, steps, prompts and photo is found before the output folder is claimed
    pp.check(args.steps, args.pnp_f_t, args.pnp_attn_t, args.feature_layers, args.attn_layers,
             args.inversion_steps or args.steps)
    pp.encode_prompts([args.prompt, args.negative_prompt, args.inversion_prompt])
    x0 = pp.encode_image(args.image, args.height, args.width)
    name = f"pnp_{_slug(args.prompt)}.png"
    with RunFolder.claim(args.out, "pnp", overwrite=args.overwrite, resumable=False) as run:
        t0 = time.time()
        res = pp(x0, args.prompt, negative_prompt=args.negative_prompt, inversion_prompt=args.inversion_prompt,
                 num_inference_steps=args.steps, inversion_steps=args.inversion_steps, guidance_scale=args.guidance,
                 pnp_f_t=args.pnp_f_t, pnp_attn_t=args.pnp_attn_t, feature_layers=tuple(args.feature_layers),
                 attn_layers=args.attn_layers, height=args.height, width=args.width, output_type="pil")
        secs = time.time() - t0
        source = pp.output(res.inversion.trajectory[0], "pil")[0]
        _save_png(res.images[0], run.path / name)
        _save_png(_row([source, res.images[0]]), run.path / "grid.png")
        write_json(run.path / "settings.json",
                   dict(verb="pnp", image=args.image, prompt=args.prompt, negative_prompt=args.negative_prompt,
                        inversion_prompt=args.inversion_prompt, num_inference_steps=args.steps,
                        inversion_steps=args.inversion_steps or args.steps, guidance_scale=args.guidance,
                        pnp_f_t=args.pnp_f_t, pnp_attn_t=args.pnp_attn_t, feature_layers=args.feature_layers,
                        attn_layers=args.attn_layers, seed=args.seed, model=os.path.abspath(args.model),
                        seconds=round(secs, 2)))
    print(f"wrote {name}, grid.png (photo | translation) and settings.json to {args.out}")
    return 0
