"""Loads the native module gsplat_kit._C and explains what to do when it is missing or stale.

Everything native goes through `load()`: the rasteriser (render/) and the attention kernel (edit/).
"""
from __future__ import annotations

import functools
import glob
import hashlib
import json
import os

_PKG = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_PKG)
_HOW = "Build it with `make build` (or `pip install --no-build-isolation -e .`) in the repository root."


class NativeBuildError(RuntimeError):
    """The native module is missing, fails to import, or was built from other sources."""


def _sources_hash() -> str | None:
    """Hash of csrc/ exactly as setup.py computes it; None outside a source checkout."""
    csrc = os.path.join(_ROOT, "csrc")
    if not os.path.isdir(csrc):
        return None
    pats = ["csrc/**/*.cpp", "csrc/**/*.cu", "csrc/**/*.h", "csrc/**/*.cuh"]
    files = sorted({os.path.relpath(f, _ROOT) for p in pats for f in glob.glob(os.path.join(_ROOT, p), recursive=True)})
    h = hashlib.sha256()
    for f in files:
        h.update(f.encode())
        with open(os.path.join(_ROOT, f), "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def load():
    """Returns the native module, or raises NativeBuildError saying how to build it."""
    import torch  # noqa: F401  (the extension links against torch's libraries)

    try:
        from gsplat_kit import _C
    except ImportError as e:
        raise NativeBuildError(f"gsplat_kit's native module gsplat_kit._C is not built or does not load ({e}). {_HOW}") from e
    if os.environ.get("GSPLAT_KIT_ALLOW_STALE", "0") in ("", "0"):
        current = _sources_hash()
        info_path = os.path.join(_PKG, "_build_info.json")
        if current is not None:
            try:
                with open(info_path) as f:
                    built = json.load(f)["sources_sha256"]
            except (OSError, ValueError, KeyError):
                built = None
            if built != current:
                raise NativeBuildError(
                    f"gsplat_kit._C is stale: csrc/ changed since it was built ({info_path}). {_HOW} "
                    "(GSPLAT_KIT_ALLOW_STALE=1 skips this check.)"
                )
    return _C


def cuda_compiled() -> bool:
    """Whether the CUDA kernels were compiled into gsplat_kit._C."""
    return bool(load().cuda_compiled())


def describe() -> str:
    import torch

    gpu = torch.cuda.is_available()
    return (
        f"gsplat_kit._C: CPU kernels (OpenMP, {load().omp_max_threads()} threads); "
        f"CUDA kernels {'compiled in' if cuda_compiled() else 'not compiled'}; "
        f"GPU {'visible: ' + torch.cuda.get_device_name() if gpu else 'not visible'}"
    )
