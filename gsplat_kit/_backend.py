"""The one way into the native kernels: `ops()` returns the ops that gsplat_kit._C registers with torch's
dispatcher (torch.ops.gsplat_kit: each op runs its CPU or CUDA implementation by the device of its
tensors), after checking that the build is current, and explains what to do when it is missing or stale.

Everything native goes through here: the rasteriser (render/), the attention kernel (edit/) and the SSIM
loss (train/). `use_ops()` routes those calls to another namespace for a while; the tests use it to run
the CUDA kernels through the SIMT harness (torch.ops.gsplat_kit_simt, csrc/simt/) on the CPU.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os

from gsplat_kit import _build_hash
from gsplat_kit.common.errors import UserError

_PKG = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_PKG)
_HOW = "Build it with `make build` (or `pip install --no-build-isolation -e .`) in the repository root."
NAMESPACE = "gsplat_kit"


class NativeBuildError(RuntimeError):
    """The native module is missing, fails to import, or was built from other sources."""


def _sources_hash() -> str | None:
    """Hash of csrc/ exactly as setup.py computes it; None outside a source checkout."""
    return _build_hash.sources_hash(_ROOT)


@functools.lru_cache(maxsize=None)
def load():
    """Loads gsplat_kit._C (which registers the ops) and returns them, torch.ops.gsplat_kit; raises
    NativeBuildError saying how to build it when it is missing or stale."""
    import torch

    try:
        from gsplat_kit import _C  # noqa: F401  (loading the library registers the ops)
    except ImportError as e:
        built_for = build_info().get("torch")
        if built_for and built_for != torch.__version__:
            raise NativeBuildError(
                f"gsplat_kit._C was built against torch {built_for} and this is torch {torch.__version__} ({e}): "
                f"install gsplat_kit again against this torch, or that torch. {_HOW}") from e
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
    register_fakes(NAMESPACE)
    ops = getattr(torch.ops, NAMESPACE)
    try:
        ops.cpu_isa()  # chooses the CPU kernels' instruction set now: a bad GSPLAT_KIT_ISA fails here
    except RuntimeError as e:
        raise UserError(str(e).splitlines()[0]) from None
    return ops


_selected = None  # the namespace use_ops() routes to, or None


def ops():
    """The native ops every caller uses: torch.ops.gsplat_kit, or the namespace use_ops() selected."""
    return load() if _selected is None else _selected


@contextlib.contextmanager
def use_ops(namespace: str):
    """Inside the block, ops() is torch.ops.<namespace> (which must define gsplat_kit's kernel ops)."""
    import torch

    global _selected
    load()  # the real module as well: its schemas and build checks stay in force
    before, _selected = _selected, getattr(torch.ops, namespace)
    try:
        yield _selected
    finally:
        _selected = before


def cuda_compiled() -> bool:
    """Whether the CUDA kernels were compiled into gsplat_kit._C."""
    return bool(load().cuda_compiled())


def build_info() -> dict:
    """gsplat_kit/_build_info.json, written by setup.py beside the module: the sources' hash, the torch it
    was built against, the CPU target; {} when absent or unreadable."""
    try:
        with open(os.path.join(_PKG, "_build_info.json")) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def cpu_isa() -> str:
    """The instruction set the CPU kernels run: avx512, avx2 or sse (x86-64), chosen by the CPU, or by
    GSPLAT_KIT_ISA (csrc/cpu_isa.h)."""
    return str(load().cpu_isa())


def cpu_isa_choices() -> list[str]:
    """What GSPLAT_KIT_ISA may choose on this CPU in this build, best first (one entry in a build for
    one CPU, GSPLAT_KIT_MARCH)."""
    return [str(n) for n in load().cpu_isa_choices()]


def describe() -> str:
    import torch

    gpu = torch.cuda.is_available()
    ops = load()
    if ops.cpu_isa_dispatch():
        simd = f"{cpu_isa()} (chosen at run time among {', '.join(cpu_isa_choices())}; GSPLAT_KIT_ISA overrides)"
    else:
        simd = f"{cpu_isa()} (built for one CPU: {build_info().get('cpu_target', 'GSPLAT_KIT_MARCH')})"
    return (
        f"gsplat_kit._C: CPU kernels (OpenMP, {ops.omp_max_threads()} threads, SIMD {simd}); "
        f"CUDA kernels {'compiled in' if cuda_compiled() else 'not compiled'}; "
        f"GPU {'visible: ' + torch.cuda.get_device_name() if gpu else 'not visible'}"
    )


# ---- abstract implementations: output shapes and dtypes without computing, so that torch.compile (and
# the meta device) can trace through the ops. One set, registered for every namespace of these ops. ----

_faked: set[str] = set()


def register_fakes(namespace: str) -> None:
    """Registers the ops' fake implementations under torch.ops.<namespace> (once per namespace)."""
    import torch

    if namespace in _faked:
        return
    _faked.add(namespace)
    i32, i64 = torch.int32, torch.int64

    def fake(name):
        return torch.library.register_fake(f"{namespace}::{name}")

    @fake("projection_fwd")
    def _(means, covars, quats, scales, viewmats, Ks, width, height, eps2d, near_plane, far_plane, radius_clip):
        C, N = viewmats.shape[0], means.shape[0]
        return (means.new_empty((C, N, 2), dtype=i32), means.new_empty((C, N, 2)), means.new_empty((C, N)),
                means.new_empty((C, N, 3)), means.new_empty((C, N)))

    @fake("projection_bwd")
    def _(means, covars, quats, scales, viewmats, Ks, width, height, eps2d, radii, v_means2d, v_depths, v_conics, v_comps):
        none = means.new_empty((0,))
        if covars is not None:
            return torch.empty_like(means), torch.empty_like(covars), none, none.clone()
        return torch.empty_like(means), none, torch.empty_like(quats), torch.empty_like(scales)

    @fake("sh_fwd")
    def _(degree, dirs, coeffs):
        return dirs.new_empty((dirs.shape[0], 3))

    @fake("sh_bwd")
    def _(degree, dirs, coeffs, v_colors):
        return torch.empty_like(coeffs), torch.empty_like(dirs)

    @fake("isect_tiles")
    def _(means2d, radii, depths, tile_size, tiles_w, tiles_h, width, height):
        C, N = means2d.shape[:2]
        n = torch.library.get_ctx().new_dynamic_size()  # the number of intersections depends on the data
        return (means2d.new_empty((C, N), dtype=i32), means2d.new_empty((n,), dtype=i64),
                means2d.new_empty((n,), dtype=i32), means2d.new_empty((C, tiles_h, tiles_w), dtype=i32))

    @fake("rasterize_fwd")
    def _(means2d, conics, colors, opacities, backgrounds, isect_offsets, flatten_ids, width, height, tile_size):
        C, D = means2d.shape[0], colors.shape[-1]
        return (means2d.new_empty((C, height, width, D)), means2d.new_empty((C, height, width, 1)),
                means2d.new_empty((C, height, width), dtype=i32))

    @fake("rasterize_bwd")
    def _(means2d, conics, colors, opacities, backgrounds, isect_offsets, flatten_ids, width, height, tile_size,
          render_alphas, last_ids, v_render_colors, v_render_alphas, absgrad):
        return (torch.empty_like(means2d), torch.empty_like(means2d) if absgrad else means2d.new_empty((0,)),
                torch.empty_like(conics), torch.empty_like(colors), torch.empty_like(opacities))

    @fake("attention_forward")
    def _(q, k, v, heads, scale, src, slot, col_ptr=None, rows=None, vals=None, c=None, store=None, store_idx=()):
        return q.new_empty((q.shape[0], q.shape[1], v.shape[2]))

    if namespace == NAMESPACE:  # the CPU-only SSIM is not part of the harness
        @fake("ssim_forward")
        def _(x, y, window):
            return torch.empty_like(x), x.new_empty((5, *x.shape))

        @fake("ssim_backward")
        def _(x, y, window, moments, grad):
            return torch.empty_like(x)
