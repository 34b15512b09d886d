"""Gaussian splats as data: the `Splats` type (gsplat's parameter names, raw parameters as training
keeps them), its activation, and `load_splats`, the one loader of a splat file (.ply, compressed .ply,
.splat, .spz: see gsplat_kit.scene.formats), a training checkpoint or a run folder (one rule for which
file of a folder).

Raw parameters: means [N,3], quats [N,4] (w, x, y, z, any norm), scales [N,3] (log), opacities [N]
(logit), sh0 [N,1,3] and shN [N,(d+1)^2-1,3] (SH coefficients).
"""
from __future__ import annotations

import functools
import math
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from gsplat_kit.common.errors import UserError

SPLAT_KEYS = ("means", "quats", "scales", "opacities", "sh0", "shN")
# The run-folder layout training writes: OUT/point_cloud.ply, OUT/ckpts/ckpt_<step>.pt
RUN_PLY = "point_cloud.ply"
CKPT_DIR = "ckpts"
CKPT_PATTERN = re.compile(r"^ckpt_(\d+)\.pt$")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
SH_C0 = 0.28209479177387814   # Y_0^0, the degree-0 SH band: colour = SH_C0 * sh0 + 0.5


class SplatLoadError(UserError):
    """Splats that cannot be opened; the message names the file and what is wrong."""


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """[..., 4] (w, x, y, z), any norm -> [..., 3, 3] rotation."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(quats.shape[:-1] + (3, 3))


def sh_degree_for(num_coeffs: int) -> int:
    """SH degree of K coefficients per channel (1, 4, 9, 16 -> 0..3)."""
    return int(round(math.sqrt(num_coeffs))) - 1


class Splats:
    """Raw Gaussian parameters (a dict of tensors, as `splats[...]`), with what every user of them needs:
    the count, the SH degree, activation and device moves. Training keeps its own nn.Parameters and wraps
    them (`Splats(params)`) where it needs these."""

    def __init__(self, params: dict):
        self.params = params

    # dict-like access, so code that takes a splat dict takes a Splats too
    def __getitem__(self, key: str) -> torch.Tensor:
        return self.params[key]

    def __contains__(self, key: str) -> bool:
        return key in self.params

    def keys(self):
        return self.params.keys()

    def items(self):
        return self.params.items()

    @property
    def num(self) -> int:
        return int(self.params["means"].shape[0])

    @property
    def sh_degree(self) -> int:
        return sh_degree_for(1 + self.params["shN"].shape[1])

    def sh_coeffs(self) -> torch.Tensor:
        """[N, K, 3]: sh0 and shN together."""
        sh0, shN = self.params["sh0"], self.params["shN"]
        return torch.cat([sh0, shN], 1) if shN.shape[1] else sh0

    def activated(self) -> dict:
        """The rasteriser's inputs: means, unit quats, scales (exp), opacities (sigmoid), colors (SH)."""
        p = self.params
        return {"means": p["means"], "quats": F.normalize(p["quats"], dim=-1), "scales": torch.exp(p["scales"]),
                "opacities": torch.sigmoid(p["opacities"]), "colors": self.sh_coeffs()}

    def to(self, device=None, dtype=None) -> Splats:
        return Splats({k: v.detach().to(device=device, dtype=dtype) for k, v in self.params.items()})

    def as_dict(self) -> dict:
        return dict(self.params)

    @classmethod
    def checked(cls, params: dict, where: str) -> Splats:
        """Validates names, shapes and values of raw parameters from a file; float32 CPU tensors."""
        missing = [k for k in SPLAT_KEYS[:5] if k not in params]
        if missing:
            raise SplatLoadError(f"{where}: missing Gaussian parameters {missing} (has {sorted(params)})")
        try:
            out = {k: torch.as_tensor(params[k]).detach().to("cpu", torch.float32) for k in SPLAT_KEYS[:5]}
            shn = params.get("shN")
            n = out["means"].shape[0] if out["means"].dim() == 2 else -1
            out["shN"] = torch.zeros(max(n, 0), 0, 3) if shn is None else torch.as_tensor(shn).detach().to("cpu", torch.float32)
        except (TypeError, RuntimeError, ValueError) as e:
            raise SplatLoadError(f"{where}: Gaussian parameters are not numeric tensors ({e})") from None
        if out["sh0"].dim() == 2:
            out["sh0"] = out["sh0"][:, None, :]
        expect = {"means": (n, 3), "quats": (n, 4), "scales": (n, 3), "opacities": (n,), "sh0": (n, 1, 3)}
        for k, shape in expect.items():
            if tuple(out[k].shape) != shape:
                raise SplatLoadError(f"{where}: '{k}' has shape {list(out[k].shape)}, expected {list(shape)}")
        if n <= 0:
            raise SplatLoadError(f"{where}: the scene holds no Gaussians")
        shn = out["shN"]
        if shn.dim() != 3 or shn.shape[0] != n or shn.shape[2] != 3 or shn.shape[1] not in (0, 3, 8, 15):
            raise SplatLoadError(f"{where}: 'shN' has shape {list(shn.shape)}, expected [{n}, 0|3|8|15, 3]")
        for k, t in out.items():
            if not bool(torch.isfinite(t).all()):
                raise SplatLoadError(f"{where}: '{k}' holds NaN or inf values")
        return cls({k: out[k] for k in SPLAT_KEYS})


# ---- files -----------------------------------------------------------------------------------------------

def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step of a training checkpoint name (ckpt_<step>.pt), None for other names."""
    m = CKPT_PATTERN.match(Path(path).name)
    return int(m.group(1)) if m else None


def list_checkpoints(run: str | os.PathLike) -> list[Path]:
    """A run folder's checkpoints, oldest step first."""
    folder = Path(run) / CKPT_DIR
    if not folder.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in folder.iterdir() if checkpoint_step(p) is not None and p.is_file()]
    return [p for _, p in sorted(found)]


def run_folder_file(folder: str | os.PathLike) -> Path:
    """Which file of a folder holds its splats: the final point_cloud.ply, else the original 3DGS layout's
    point_cloud/iteration_<highest>/point_cloud.ply, else the checkpoint of the highest step."""
    folder = Path(folder)
    if (folder / RUN_PLY).is_file():
        return folder / RUN_PLY
    iters = [(int(p.parent.name.split("_")[-1]), p) for p in folder.glob("point_cloud/iteration_*/point_cloud.ply")
             if p.parent.name.split("_")[-1].isdigit()]
    if iters:
        return max(iters)[1]
    ckpts = list_checkpoints(folder)
    if ckpts:
        return ckpts[-1]
    raise SplatLoadError(f"{folder}: no {RUN_PLY}, point_cloud/iteration_*/point_cloud.ply or {CKPT_DIR}/ckpt_*.pt "
                         f"in this folder")


def _read_checkpoint(path: Path) -> dict:
    from gsplat_kit.common.safe_load import load_torch_data

    ck = load_torch_data(path, "checkpoint")
    if not isinstance(ck, dict):
        raise SplatLoadError(f"{path}: expected a dict checkpoint, got {type(ck).__name__}")
    for key in ("splats", "gaussians", "model"):
        if isinstance(ck.get(key), dict):
            ck = ck[key]
            break
    return {k.rsplit(".", 1)[-1]: v for k, v in ck.items() if isinstance(v, torch.Tensor)}  # "splats.means" -> "means"


@functools.cache
def _readers() -> dict:
    """Readers by file suffix: each returns raw parameters (a dict of arrays or tensors). A .ply is either
    layout (the 3DGS one or PlayCanvas' compressed one: the reader tells them apart by the header)."""
    from gsplat_kit.scene.formats import FORMATS

    files = {f.suffix: f.read for f in FORMATS.values() if f.suffix.count(".") == 1}  # .compressed.ply is a .ply
    return {**files, **{s: _read_checkpoint for s in CHECKPOINT_SUFFIXES}}


def __getattr__(name):
    # READERS is built on first use: the format modules import this one (SH_C0, Splats)
    if name == "READERS":
        return _readers()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve_splat_file(path: str | os.PathLike) -> Path:
    """The file `load_splats` reads for `path` (a folder resolves to its splat file)."""
    path = Path(path).expanduser()
    if path.is_dir():
        return run_folder_file(path)
    if not path.is_file():
        raise FileNotFoundError(2, "no such file or folder", str(path))
    return path


def load_splats(path: str | os.PathLike, device="cpu") -> Splats:
    """Splats from a file (by suffix: see READERS) or a run folder; validated, float32, on `device`."""
    path = resolve_splat_file(path)
    reader = _readers().get(path.suffix.lower())
    if reader is None:
        raise SplatLoadError(f"{path}: unknown splat file type {path.suffix!r}; known: "
                             f"{', '.join(sorted(_readers()))} or a run folder")
    return Splats.checked(reader(path), str(path)).to(device)
