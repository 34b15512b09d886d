"""antimatter15's `.splat` (the WebGL viewer's format): 32 bytes per Gaussian, no header.

Per Gaussian: position float32 x3, scale float32 x3 (linear, not log), RGBA uint8 x4 (the DC colour and
the opacity), rotation uint8 x4 (w, x, y, z of the unit quaternion, stored as q * 128 + 128). Writers
sort by size x opacity so that a viewer streaming the file shows the important Gaussians first.
Higher SH bands are not stored: a .splat reads back with SH degree 0.

Error bounds of a round trip: positions exact, scales to float32 rounding, colour and opacity to half
a step of 1/255, rotation components to half a step of 1/128.
"""
from __future__ import annotations

import numpy as np

from gsplat_kit.common.errors import UserError
from gsplat_kit.scene.formats.packing import logit_of_fraction, rgb_of_sh0, sh0_of_rgb, sigmoid, to_u8, unit_quats

RECORD = np.dtype([("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])


class SplatFileError(UserError):
    """A .splat file that cannot be read."""


def encode(params: dict) -> tuple[bytes, np.ndarray]:
    """The file's bytes and the order the Gaussians were written in (indices into params)."""
    scales = np.exp(params["scales"].astype(np.float64))
    opac = sigmoid(params["opacities"])
    order = np.argsort(-(scales.prod(-1) * opac), kind="stable")
    rec = np.zeros(len(order), RECORD)
    rec["pos"] = params["means"][order]
    rec["scale"] = scales[order]
    rgb = rgb_of_sh0(params["sh0"][order, 0])
    rec["rgba"] = to_u8(np.concatenate([rgb, opac[order, None]], 1) * 255)
    rec["rot"] = to_u8(unit_quats(params["quats"][order]) * 128 + 128)
    return rec.tobytes(), order


def decode(path, blob: bytes) -> dict:
    if len(blob) == 0:
        raise SplatFileError(f"{path}: empty .splat file")
    if len(blob) % RECORD.itemsize:
        raise SplatFileError(f"{path}: {len(blob)} bytes is not a whole number of {RECORD.itemsize}-byte .splat "
                             f"records (truncated or not a .splat file)")
    rec = np.frombuffer(blob, RECORD)
    scale = rec["scale"].astype(np.float64)
    bad = ~(scale > 0)  # also NaN
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise SplatFileError(f"{path}: record {row} has a scale that is not positive ({rec['scale'][row].tolist()})")
    n = len(rec)
    with np.errstate(divide="ignore"):
        log_scales = np.log(np.maximum(scale, np.finfo(np.float32).tiny))
    rgba = rec["rgba"].astype(np.float64) / 255
    return {
        "means": rec["pos"].astype(np.float32),
        "scales": log_scales.astype(np.float32),
        "quats": unit_quats((rec["rot"].astype(np.float64) - 128) / 128).astype(np.float32),
        "opacities": logit_of_fraction(rgba[:, 3], 255).astype(np.float32),
        "sh0": sh0_of_rgb(rgba[:, :3]).astype(np.float32).reshape(n, 1, 3),
        "shN": np.zeros((n, 0, 3), np.float32),
    }


def read(path) -> dict:
    with open(path, "rb") as f:
        return decode(path, f.read())
