"""Optimizer-state surgery for densification: every op edits the splat parameters *and* the Adam
moments of the rows it touches, so that a cloned, split, pruned or relocated Gaussian starts from a
consistent optimizer state (new rows get zero moments; surviving rows keep theirs).

`params` is a dict name -> nn.Parameter; `optimizers` a dict name -> torch.optim.Optimizer holding
exactly that one parameter (the 3DGS layout: one learning rate per attribute); `state` a dict of
per-Gaussian tensors that the strategy accumulates (gradient sums, counts, radii), which follow the
same row edits.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from gsplat_kit.scene.splats import quat_to_rotmat


@torch.no_grad()
def update_params(param_fn: Callable, optimizer_fn: Callable, params: dict, optimizers: dict, names=None):
    """Replace params[name] by param_fn(name, p) and map each Adam moment through optimizer_fn(key, v)."""
    for name in (names if names is not None else list(params.keys())):
        old = params[name]
        new = torch.nn.Parameter(param_fn(name, old.data), requires_grad=old.requires_grad)
        params[name] = new
        opt = optimizers.get(name)
        if opt is None:
            continue
        for group in opt.param_groups:
            if group["params"][0] is not old:
                continue
            pstate = opt.state.pop(old, {})
            for key, v in list(pstate.items()):
                # Adam's "step" is a scalar shared by all rows; only per-row moments are edited.
                if key != "step" and isinstance(v, torch.Tensor) and v.shape[:1] == old.shape[:1] and v.dim() > 0:
                    pstate[key] = optimizer_fn(key, v)
            group["params"] = [new]
            if pstate:
                opt.state[new] = pstate


def _map_state(state: dict, fn: Callable):
    for k, v in list(state.items()):
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            state[k] = fn(v)


@torch.no_grad()
def duplicate(params, optimizers, state, mask: torch.Tensor):
    """Clone the Gaussians in `mask` (appended at the end, identical parameters, zero moments)."""
    sel = torch.where(mask)[0]
    update_params(lambda n, p: torch.cat([p, p[sel]]),
                  lambda k, v: torch.cat([v, v.new_zeros((len(sel), *v.shape[1:]))]), params, optimizers)
    _map_state(state, lambda v: torch.cat([v, v[sel]]))


@torch.no_grad()
def split(params, optimizers, state, mask: torch.Tensor, n_samples: int = 2, scale_factor: float = 1.6,
          generator: torch.Generator | None = None):
    """Replace each Gaussian in `mask` by `n_samples` Gaussians whose centres are drawn from it and whose
    scales are divided by `scale_factor` (3DGS Sec. 5.2). Kept ones stay in order; new ones are appended."""
    sel = torch.where(mask)[0]
    rest = torch.where(~mask)[0]
    scales = torch.exp(params["scales"][sel])
    rot = quat_to_rotmat(params["quats"][sel])
    noise = torch.randn(n_samples, len(sel), 3, device=scales.device, dtype=scales.dtype, generator=generator)
    offsets = torch.einsum("nij,nj,snj->sni", rot, scales, noise)                        # [S, M, 3]

    def param_fn(name, p):
        if name == "means":
            new = (p[sel][None] + offsets).reshape(-1, 3)
        elif name == "scales":
            new = torch.log(scales / scale_factor).repeat(n_samples, 1)
        else:
            new = p[sel].repeat(n_samples, *[1] * (p.dim() - 1))
        return torch.cat([p[rest], new])

    update_params(param_fn, lambda k, v: torch.cat([v[rest], v.new_zeros((n_samples * len(sel), *v.shape[1:]))]),
                  params, optimizers)
    _map_state(state, lambda v: torch.cat([v[rest], v[sel].repeat(n_samples, *[1] * (v.dim() - 1))]))


@torch.no_grad()
def remove(params, optimizers, state, mask: torch.Tensor):
    """Drop the Gaussians in `mask`."""
    keep = torch.where(~mask)[0]
    update_params(lambda n, p: p[keep], lambda k, v: v[keep], params, optimizers)
    _map_state(state, lambda v: v[keep])


@torch.no_grad()
def reset_opacity(params, optimizers, state, value: float):
    """Clamp every opacity to at most `value` (3DGS's periodic reset) and zero the opacity moments."""
    cap = math.log(value / (1.0 - value))
    update_params(lambda n, p: p.clamp(max=cap), lambda k, v: torch.zeros_like(v), params, optimizers,
                  names=["opacities"])


# --- MCMC (Kheradmand et al., "3D Gaussian Splatting as Markov Chain Monte Carlo", 2024) ---

def binomial_table(n_max: int = 51) -> torch.Tensor:
    t = torch.zeros(n_max, n_max)
    for n in range(n_max):
        for k in range(n + 1):
            t[n, k] = math.comb(n, k)
    return t


def relocation_update(opacities: torch.Tensor, scales: torch.Tensor, ratios: torch.Tensor, binoms: torch.Tensor):
    """Opacity and scale of each of `ratios` copies so that their sum renders like the original (Eq. 9)."""
    ratios = ratios.clamp(1, binoms.shape[0]).to(opacities.dtype)
    new_opa = 1.0 - torch.pow(1.0 - opacities, 1.0 / ratios)
    denom = torch.zeros_like(opacities)
    for i in range(1, binoms.shape[0] + 1):
        for k in range(i):
            term = binoms[i - 1, k] * ((-1) ** k / math.sqrt(k + 1)) * new_opa ** (k + 1)
            denom = denom + torch.where(i <= ratios, term, torch.zeros_like(term))
    coeff = opacities / denom
    return new_opa, coeff[:, None] * scales


def _sample(probs: torch.Tensor, n: int, generator=None) -> torch.Tensor:
    probs = probs / probs.sum()
    return torch.multinomial(probs, n, replacement=True, generator=generator)


def _shared_mass(params, src: torch.Tensor, binoms: torch.Tensor, min_opacity: float) -> dict:
    """Opacity and scale parameters (logit, log) of the Gaussians `src` once each shares its mass with the
    copies it gets (a Gaussian drawn m times ends up as m + 1)."""
    eps = torch.finfo(torch.float32).eps
    opa = torch.sigmoid(params["opacities"])
    ratios = torch.bincount(src, minlength=len(opa))[src] + 1
    new_opa, new_scales = relocation_update(opa[src], torch.exp(params["scales"][src]), ratios, binoms.to(opa.device))
    return {"opacities": torch.logit(new_opa.clamp(min_opacity, 1.0 - eps)), "scales": torch.log(new_scales)}


def _with_shared_mass(name: str, p: torch.Tensor, src: torch.Tensor, shared: dict) -> torch.Tensor:
    p = p.clone()
    if name in shared:
        p[src] = shared[name]
    return p


@torch.no_grad()
def relocate(params, optimizers, state, dead: torch.Tensor, binoms: torch.Tensor, min_opacity: float = 0.005,
             generator=None):
    """Move the `dead` Gaussians onto live ones sampled by opacity; sources and copies share the mass."""
    opa = torch.sigmoid(params["opacities"])
    dead_idx = torch.where(dead)[0]
    alive_idx = torch.where(~dead)[0]
    if len(dead_idx) == 0 or len(alive_idx) == 0:
        return 0
    src = alive_idx[_sample(opa[alive_idx], len(dead_idx), generator)]
    shared = _shared_mass(params, src, binoms, min_opacity)

    def param_fn(name, p):
        p = _with_shared_mass(name, p, src, shared)
        p[dead_idx] = p[src]
        return p

    def optimizer_fn(key, v):
        v = v.clone()
        v[src] = 0
        v[dead_idx] = 0
        return v

    update_params(param_fn, optimizer_fn, params, optimizers)
    for k, v in list(state.items()):
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            v[src] = 0
    return len(dead_idx)


@torch.no_grad()
def sample_add(params, optimizers, state, n: int, binoms: torch.Tensor, min_opacity: float = 0.005, generator=None):
    """Append `n` Gaussians copied from existing ones sampled by opacity (mass shared as in relocate)."""
    src = _sample(torch.sigmoid(params["opacities"]), n, generator)
    shared = _shared_mass(params, src, binoms, min_opacity)

    def param_fn(name, p):
        p = _with_shared_mass(name, p, src, shared)
        return torch.cat([p, p[src]])

    update_params(param_fn, lambda k, v: torch.cat([v, v.new_zeros((n, *v.shape[1:]))]), params, optimizers)
    _map_state(state, lambda v: torch.cat([v, v[src]]))
    return n


@torch.no_grad()
def inject_noise(params, scaler: float, generator=None):
    """SGLD-style noise on the centres, shaped by each covariance and gated to near-transparent ones."""
    opa = torch.sigmoid(params["opacities"])
    scales = torch.exp(params["scales"])
    rot = quat_to_rotmat(params["quats"])
    M = rot * scales[:, None, :]
    covar = M @ M.transpose(1, 2)
    gate = torch.sigmoid(100.0 * ((1.0 - opa) - 0.995))   # ~1 for opacity < 0.005, ~0 above ~0.05
    noise = torch.randn(params["means"].shape, generator=generator, device=opa.device, dtype=opa.dtype)
    noise = noise * gate[:, None] * scaler
    params["means"].add_(torch.einsum("nij,nj->ni", covar, noise))
