"""What the compact splat formats share: raw parameters as float32 numpy arrays, and the conversions
between raw parameters (logits, log-scales, SH coefficients) and the 8-bit values the formats store."""
from __future__ import annotations

import numpy as np

from gsplat_kit.scene.splats import SH_C0

SQRT1_2 = 0.7071067811865476  # the largest a quaternion's other components can be after the largest is dropped


def numpy_params(splats) -> dict:
    """Raw parameters (a Splats or a dict of tensors/arrays) as contiguous float32 numpy arrays."""
    out = {}
    for k in ("means", "quats", "scales", "opacities", "sh0", "shN"):
        v = splats[k]
        v = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
        out[k] = np.ascontiguousarray(v, np.float32)
    out["sh0"] = out["sh0"].reshape(-1, 1, 3)
    return out


def to_u8(x: np.ndarray) -> np.ndarray:
    """Rounds to the nearest byte value, clamped to 0..255."""
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def unit_quats(quats: np.ndarray) -> np.ndarray:
    """Normalised quaternions; a zero quaternion (no rotation information) becomes the identity."""
    q = np.asarray(quats, np.float64)
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    ident = np.zeros_like(q)
    ident[..., 0] = 1.0
    return np.where(norm > 0, q / np.where(norm > 0, norm, 1.0), ident)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def logit_of_fraction(a: np.ndarray, levels: int) -> np.ndarray:
    """The opacity logit of a stored fraction a in [0, 1] quantised to `levels` steps. The ends are pulled
    half a step inwards, so 0 and 1 (a fully transparent or opaque Gaussian) stay finite logits."""
    half = 0.5 / levels
    a = np.clip(np.asarray(a, np.float64), half, 1.0 - half)
    return np.log(a / (1.0 - a))


def sh0_of_rgb(rgb: np.ndarray) -> np.ndarray:
    """DC SH coefficients of colours in [0, 1]."""
    return (np.asarray(rgb, np.float64) - 0.5) / SH_C0


def rgb_of_sh0(sh0: np.ndarray) -> np.ndarray:
    return np.asarray(sh0, np.float64) * SH_C0 + 0.5
