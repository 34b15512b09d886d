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

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from tqdm.auto import tqdm

from gsplat_kit.common.atomic import atomic_path
from gsplat_kit.common.errors import UserError
from gsplat_kit.common.safe_load import load_torch_data

from .stable_diffusion import StableDiffusionBase

METHODS = ("null-text", "ddim", "negative-prompt")
# Schedulers whose config is the DDPM beta schedule DDIM inversion needs (they share one config format).
_DDPM_LIKE = ("DDIMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
              "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
              "DDPMScheduler", "UniPCMultistepScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler")


class InversionError(UserError):
    """The model, scheduler, image or inversion file cannot be used as asked."""


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

    def save(self, path):
        """torch.save to `path` atomically (tensors and plain data only: loadable with weights_only=True)."""
        with atomic_path(path) as tmp:
            torch.save({"latents": self.latents, "trajectory": list(self.trajectory),
                        "uncond_embeddings": list(self.uncond_embeddings), "timesteps": self.timesteps,
                        "prompt": self.prompt, "method": self.method, "guidance_scale": float(self.guidance_scale),
                        "losses": [float(x) for x in self.losses]}, tmp)

    @classmethod
    def load(cls, path) -> InversionResult:
        """An inversion file written by `save`, loaded as data only; anything else is an InversionError
        naming the file."""
        d = load_torch_data(path, "inversion file")
        _check_saved(d, path)
        return cls(**d)


def _check_saved(d, path) -> None:
    def bad(what):
        raise InversionError(f"{path}: not an inversion file of gsplat_kit ({what})")

    if not isinstance(d, dict):
        bad(f"holds a {type(d).__name__}, not a dict")
    missing = sorted({"latents", "trajectory", "uncond_embeddings", "timesteps", "prompt", "method",
                      "guidance_scale"} - set(d))
    if missing:
        bad(f"missing {', '.join(missing)}")
    unknown = sorted(set(d) - {f.name for f in InversionResult.__dataclass_fields__.values()})
    if unknown:
        bad(f"unknown field(s) {', '.join(map(str, unknown))}")
    lat, traj, unc, ts = d["latents"], d["trajectory"], d["uncond_embeddings"], d["timesteps"]
    if not (isinstance(lat, torch.Tensor) and lat.dim() == 4 and lat.shape[0] == 1):
        bad("latents is not a [1, C, h, w] tensor")
    if not (isinstance(ts, torch.Tensor) and ts.dim() == 1 and len(ts) >= 1):
        bad("timesteps is not a 1-D tensor")
    if not (isinstance(traj, list) and len(traj) == len(ts) + 1
            and all(isinstance(x, torch.Tensor) and x.shape == lat.shape for x in traj)):
        bad(f"trajectory is not a list of {len(ts) + 1} latents shaped like latents")
    if not (isinstance(unc, list) and len(unc) == len(ts)
            and all(isinstance(u, torch.Tensor) and u.dim() == 3 and u.shape[0] == 1 for u in unc)):
        bad(f"uncond_embeddings is not a list of {len(ts)} [1, L, C] tensors")
    if not isinstance(d["prompt"], str) or d["method"] not in METHODS:
        bad("prompt or method has the wrong type")
    g = d["guidance_scale"]
    if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g):
        bad("guidance_scale is not a finite number")
    if not isinstance(d.get("losses", []), list):
        bad("losses is not a list")


def ddim_scheduler(pipe):
    """A DDIMScheduler with the pipeline's beta schedule and prediction type (clip_sample and
    set_alpha_to_one off, as null_text_w_ptp uses)."""
    name = type(pipe.scheduler).__name__
    if name not in _DDPM_LIKE:
        raise InversionError(f"unsupported scheduler {name}: DDIM inversion needs a DDPM-style beta schedule "
                             f"(one of {', '.join(_DDPM_LIKE)})")
    pred = pipe.scheduler.config.get("prediction_type", "epsilon")
    if pred not in ("epsilon", "v_prediction"):
        raise InversionError(f"unsupported prediction_type {pred!r} (epsilon or v_prediction)")
    return DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False, set_alpha_to_one=False)


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
    latents and uncond_embeddings drive Prompt2PromptPipeline (latents=..., uncond_embeddings=...).
    `pipe`: a diffusers Stable Diffusion pipeline or one of ours."""
    sd = StableDiffusionBase.of(pipe)
    if method not in METHODS:
        raise InversionError(f"unknown inversion method {method!r}: one of {', '.join(METHODS)}")
    if num_inference_steps < 1:
        raise InversionError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    sched = ddim_scheduler(sd)
    if isinstance(image, torch.Tensor) and image.dim() == 4 and image.shape[1] == sd.unet.config.in_channels:
        x0 = image.to(device=sd.device, dtype=sd.dtype)
    else:
        x0 = sd.encode_image(image, height, width)
    try:
        cond = sd.encode_prompts([prompt])
    except UserError as e:  # too long: the inversion's own prompt
        raise InversionError(f"inversion prompt: {e}") from None
    null = sd.encode_prompts([""])
    traj, ts = ddim_invert(sd, x0, cond, num_inference_steps, sched, progress)
    losses = []
    if method == "null-text":
        unconds, losses = null_text_optimize(sd, traj, cond, null, num_inference_steps, guidance_scale,
                                             num_inner_steps, epsilon, sched, progress)
    elif method == "negative-prompt":
        unconds = [cond] * num_inference_steps
    else:
        unconds = [null] * num_inference_steps
    return InversionResult(latents=traj[-1], trajectory=traj, uncond_embeddings=unconds, timesteps=ts, prompt=prompt,
                           method=method, guidance_scale=guidance_scale, losses=losses)


def reconstruct(pipe, result: InversionResult, guidance_scale: float | None = None, progress: bool = False) -> torch.Tensor:
    """x_0 sampled back from an inversion with its own embeddings (the round-trip check)."""
    cond = StableDiffusionBase.of(pipe).encode_prompts([result.prompt])
    g = result.guidance_scale if guidance_scale is None else guidance_scale
    return sample(pipe, result.latents, cond, list(result.uncond_embeddings), g, len(result.timesteps), progress=progress)
