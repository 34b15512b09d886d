"""Real images into Stable Diffusion's latent trajectory, so that Prompt-to-Prompt can edit them.

- DDIM inversion (Song et al. 2021; Dhariwal & Nichol 2021): the deterministic DDIM update run backwards.
- Null-text inversion (Mokady et al., CVPR 2023, Alg. 1): DDIM inversion with the source prompt, then per
  step an Adam optimisation of the null-text embedding so that CFG sampling retraces the trajectory.
- Negative-prompt inversion (Miyake et al. 2023): the null embedding is replaced by the source prompt's,
  which makes CFG sampling the conditional DDIM sampling that the inversion reversed (no optimisation).

The step rule is google/prompt-to-prompt's null_text_w_ptp (eps evaluated at the target timestep, the
clean end at alphas_cumprod[0] when set_alpha_to_one is False), written for epsilon and v-prediction.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

METHODS = ("null-text", "ddim", "negative-prompt")
# Schedulers whose config is the DDPM beta schedule DDIM inversion needs (they share one config format).
_DDPM_LIKE = ("DDIMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
              "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
              "DDPMScheduler", "UniPCMultistepScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler")


class InversionError(ValueError):
    """The model, scheduler or image cannot be inverted as asked."""


@dataclass
class InversionResult:
    """latents: x_T [1, C, h, w], the start of sampling. trajectory: x_0 .. x_T (DDIM inversion), one per
    timestep level. uncond_embeddings: per sampling step, the [1, L, C] embedding for the unconditional
    half of CFG (null-text: optimised; negative-prompt: the source prompt's; ddim: the empty prompt's)."""
    latents: torch.Tensor
    trajectory: list
    uncond_embeddings: list
    timesteps: torch.Tensor
    prompt: str
    method: str
    guidance_scale: float
    losses: list = field(default_factory=list)  # null-text: final loss per step

    def save(self, path: str):
        """torch.save to `path` atomically (tensors only, loadable with weights_only=True)."""
        tmp = f"{path}.tmp{os.getpid()}"
        torch.save({"latents": self.latents, "trajectory": self.trajectory, "uncond_embeddings": self.uncond_embeddings,
                    "timesteps": self.timesteps, "prompt": self.prompt, "method": self.method,
                    "guidance_scale": self.guidance_scale, "losses": self.losses}, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "InversionResult":
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such inversion file")
        d = torch.load(path, map_location="cpu", weights_only=True)
        return cls(**d)


# ---- model access ---------------------------------------------------------------------------------------

def check_pipe(pipe):
    from diffusers import UNet2DConditionModel

    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if getattr(pipe, name, None) is None:
            raise InversionError(f"the pipeline has no {name}: a Stable Diffusion pipeline (SD 1.x / 2.x) is needed")
    if not isinstance(pipe.unet, UNet2DConditionModel):
        raise InversionError(f"unsupported model: the UNet is a {type(pipe.unet).__name__}, not a UNet2DConditionModel")


def ddim_scheduler(pipe):
    """A DDIMScheduler with the pipeline's beta schedule and prediction type (clip_sample and
    set_alpha_to_one off, as null_text_w_ptp uses)."""
    from diffusers import DDIMScheduler

    name = type(pipe.scheduler).__name__
    if name not in _DDPM_LIKE:
        raise InversionError(f"unsupported scheduler {name}: DDIM inversion needs a DDPM-style beta schedule "
                             f"(one of {', '.join(_DDPM_LIKE)})")
    pred = pipe.scheduler.config.get("prediction_type", "epsilon")
    if pred not in ("epsilon", "v_prediction"):
        raise InversionError(f"unsupported prediction_type {pred!r} (epsilon or v_prediction)")
    return DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False, set_alpha_to_one=False)


@torch.no_grad()
def encode_prompt(pipe, prompt: str) -> torch.Tensor:
    """[1, L, C] text embedding; a prompt longer than the tokenizer allows is an error."""
    tok = pipe.tokenizer
    n = len(tok(prompt, truncation=False)["input_ids"])
    if n > tok.model_max_length:
        raise InversionError(f"prompt {prompt!r} is {n} tokens, more than the tokenizer's {tok.model_max_length}")
    ids = tok([prompt], padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
    return pipe.text_encoder(ids.to(pipe.unet.device))[0].to(pipe.unet.dtype)


def load_image(image, height: int, width: int) -> torch.Tensor:
    """A path / PIL image / HxWx3 uint8 array -> [1, 3, height, width] in [-1, 1], centre-cropped to the
    aspect ratio, then resized (null_text_w_ptp's load_512, for any size)."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        if not os.path.exists(image):
            raise FileNotFoundError(f"{image}: no such image")
        try:
            image = Image.open(image)
            image.load()
        except Exception as e:  # PIL raises several types for bad files
            raise InversionError(f"{image}: not a readable image ({e})") from e
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise InversionError(f"image array must be HxWx3, got shape {image.shape}")
        image = Image.fromarray(image[..., :3].astype(np.uint8))
    if not isinstance(image, Image.Image):
        raise InversionError(f"image must be a path, PIL image or HxWx3 array, got {type(image).__name__}")
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
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    return x


@torch.no_grad()
def encode_image(pipe, image, height: int | None = None, width: int | None = None) -> torch.Tensor:
    """Image -> x_0 latent [1, C, h, w] (the VAE posterior mean times the scaling factor)."""
    scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    s = pipe.unet.config.sample_size
    s = (s, s) if isinstance(s, int) else tuple(s)
    height = height or s[0] * scale
    width = width or s[1] * scale
    if height % scale or width % scale:
        raise InversionError(f"image size {width}x{height} must be a multiple of {scale}")
    x = image if isinstance(image, torch.Tensor) else load_image(image, height, width)
    x = x.to(device=pipe.vae.device, dtype=pipe.vae.dtype)
    return pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor) -> np.ndarray:
    """[N, C, h, w] latents -> [N, H, W, 3] float images in [0, 1]."""
    img = pipe.vae.decode(latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor).sample
    return (img / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()


# ---- the DDIM step, both directions -------------------------------------------------------------------

def _alpha(sched, t) -> torch.Tensor:
    t = int(t)
    return sched.alphas_cumprod[t] if t >= 0 else sched.final_alpha_cumprod


def to_eps(sched, model_output: torch.Tensor, x: torch.Tensor, t) -> torch.Tensor:
    """The model's noise prediction: eps as it is, or converted from v at the level of the timestep the
    model was given (during inversion x lies one step away from that level; the model assumes it)."""
    if sched.config.prediction_type != "v_prediction":
        return model_output
    a = _alpha(sched, t).double()
    return a.sqrt().item() * model_output + (1 - a).sqrt().item() * x


def ddim_move(sched, eps: torch.Tensor, x: torch.Tensor, a_from, a_to) -> torch.Tensor:
    """x at noise level a_from -> level a_to along the noise prediction eps (DDIM, eta 0)."""
    a_from = torch.as_tensor(a_from, dtype=torch.float64)
    a_to = torch.as_tensor(a_to, dtype=torch.float64)
    x0 = (x - (1 - a_from).sqrt().item() * eps) / a_from.sqrt().item()
    return a_to.sqrt().item() * x0 + (1 - a_to).sqrt().item() * eps


class _Steps:
    """Sampling timesteps t_0 > ... > t_{n-1}; level(i) is the noise level before sampling step i, and
    level(n) the clean end."""

    def __init__(self, sched, n: int):
        sched.set_timesteps(n)
        self.t = sched.timesteps.clone()
        self.sched = sched
        self.n = n

    def alpha_before(self, i):  # level of the latent that sampling step i denoises
        return _alpha(self.sched, self.t[i])

    def alpha_after(self, i):  # level sampling step i lands on
        return _alpha(self.sched, self.t[i + 1]) if i + 1 < self.n else self.sched.final_alpha_cumprod


def _unet(pipe, x, t, emb):
    return pipe.unet(x, t, encoder_hidden_states=emb).sample


@torch.no_grad()
def ddim_invert(pipe, latent: torch.Tensor, cond: torch.Tensor, num_inference_steps: int = 50, sched=None,
                progress: bool = True) -> tuple[list, torch.Tensor]:
    """DDIM inversion of x_0 with the embedding `cond` (no CFG); returns ([x_0, ..., x_T], timesteps)."""
    sched = sched or ddim_scheduler(pipe)
    st = _Steps(sched, num_inference_steps)
    x = latent.clone()
    traj = [x]
    for k in tqdm(range(st.n), desc="DDIM inversion", disable=not progress):
        i = st.n - 1 - k  # inverting sampling step i: from its landing level back to its start level
        eps = to_eps(sched, _unet(pipe, x, st.t[i], cond), x, st.t[i])
        x = ddim_move(sched, eps, x, st.alpha_after(i), st.alpha_before(i))
        traj.append(x)
    return traj, st.t


@torch.no_grad()
def sample(pipe, latents: torch.Tensor, cond: torch.Tensor, uncond, guidance_scale: float = 7.5,
           num_inference_steps: int = 50, sched=None, progress: bool = True) -> torch.Tensor:
    """DDIM sampling from x_T with CFG; uncond is one [1, L, C] embedding or a list, one per step.
    Returns x_0 (the reconstruction when latents/uncond come from an inversion)."""
    sched = sched or ddim_scheduler(pipe)
    st = _Steps(sched, num_inference_steps)
    x = latents
    for i in tqdm(range(st.n), desc="DDIM sampling", disable=not progress):
        u = uncond[i] if isinstance(uncond, (list, tuple)) else uncond
        x = _cfg_step(pipe, sched, st, i, x, cond, u, guidance_scale)
    return x


def _cfg_step(pipe, sched, st, i, x, cond, uncond, g):
    if g == 1.0:
        out = _unet(pipe, x, st.t[i], cond)
    else:
        n = x.shape[0]
        both = _unet(pipe, torch.cat([x, x]), st.t[i], torch.cat([uncond.expand(n, -1, -1), cond.expand(n, -1, -1)]))
        ou, oc = both.chunk(2)
        out = ou + g * (oc - ou)
    return ddim_move(sched, to_eps(sched, out, x, st.t[i]), x, st.alpha_before(i), st.alpha_after(i))


def null_text_optimize(pipe, traj: list, cond: torch.Tensor, uncond: torch.Tensor, num_inference_steps: int = 50,
                       guidance_scale: float = 7.5, num_inner_steps: int = 10, epsilon: float = 1e-5, sched=None,
                       progress: bool = True) -> tuple[list, list]:
    """Null-text optimisation (Mokady et al. 2023, Alg. 1): for each step i, Adam on the null embedding
    (lr 1e-2 * (1 - i/100), at most num_inner_steps, early stop below epsilon + i * 2e-5) so that the CFG
    step from the current latent lands on the inversion's next latent. Returns (embeddings, losses)."""
    sched = sched or ddim_scheduler(pipe)
    st = _Steps(sched, num_inference_steps)
    if len(traj) != st.n + 1:
        raise InversionError(f"the trajectory has {len(traj)} latents, {st.n + 1} expected for {st.n} steps")
    x = traj[-1]
    out_emb, losses = [], []
    u = uncond.detach().clone().float()
    bar = tqdm(total=num_inner_steps * st.n, desc="null-text optimisation", disable=not progress)
    for i in range(st.n):
        u = u.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([u], lr=1e-2 * (1.0 - i / 100.0))
        target = traj[st.n - 1 - i]
        t = st.t[i]
        with torch.no_grad():
            out_c = _unet(pipe, x, t, cond)
        loss_v = float("nan")
        done = 0
        for _ in range(num_inner_steps):
            out_u = _unet(pipe, x, t, u.to(cond.dtype))
            out = out_u + guidance_scale * (out_c - out_u)
            rec = ddim_move(sched, to_eps(sched, out, x, t), x, st.alpha_before(i), st.alpha_after(i))
            loss = F.mse_loss(rec.float(), target.float())
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_v = loss.item()
            done += 1
            bar.update()
            if loss_v < epsilon + i * 2e-5:
                break
        bar.update(num_inner_steps - done)
        losses.append(loss_v)
        out_emb.append(u[:1].detach().to(cond.dtype))
        with torch.no_grad():
            x = _cfg_step(pipe, sched, st, i, x, cond, out_emb[-1], guidance_scale)
    bar.close()
    return out_emb, losses


def invert(pipe, image, prompt: str, method: str = "null-text", num_inference_steps: int = 50,
           guidance_scale: float = 7.5, num_inner_steps: int = 10, epsilon: float = 1e-5, height=None, width=None,
           progress: bool = True) -> InversionResult:
    """Image (path, PIL, array, or an x_0 latent [1, C, h, w]) + its prompt -> InversionResult, whose
    latents and uncond_embeddings drive Prompt2PromptPipeline (latents=..., uncond_embeddings=...)."""
    check_pipe(pipe)
    if method not in METHODS:
        raise InversionError(f"unknown inversion method {method!r}: one of {', '.join(METHODS)}")
    if num_inference_steps < 1:
        raise InversionError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    sched = ddim_scheduler(pipe)
    if isinstance(image, torch.Tensor) and image.dim() == 4 and image.shape[1] == pipe.unet.config.in_channels:
        x0 = image.to(device=pipe.unet.device, dtype=pipe.unet.dtype)
    else:
        x0 = encode_image(pipe, image, height, width).to(pipe.unet.dtype)
    cond = encode_prompt(pipe, prompt)
    null = encode_prompt(pipe, "")
    traj, ts = ddim_invert(pipe, x0, cond, num_inference_steps, sched, progress)
    losses = []
    if method == "null-text":
        unconds, losses = null_text_optimize(pipe, traj, cond, null, num_inference_steps, guidance_scale,
                                             num_inner_steps, epsilon, sched, progress)
    elif method == "negative-prompt":
        unconds = [cond] * num_inference_steps
    else:
        unconds = [null] * num_inference_steps
    return InversionResult(latents=traj[-1], trajectory=traj, uncond_embeddings=unconds, timesteps=ts, prompt=prompt,
                           method=method, guidance_scale=guidance_scale, losses=losses)


def reconstruct(pipe, result: InversionResult, guidance_scale: float | None = None, progress: bool = False) -> torch.Tensor:
    """x_0 sampled back from an inversion with its own embeddings (the round-trip check)."""
    cond = encode_prompt(pipe, result.prompt)
    g = result.guidance_scale if guidance_scale is None else guidance_scale
    return sample(pipe, result.latents, cond, list(result.uncond_embeddings), g, len(result.timesteps), progress=progress)
