"""Shared fixtures: the `kernel_backend` that the CUDA-kernel tests run on, either the SIMT harness (the
.cu kernels executed on the CPU, csrc/simt/) or a real GPU, and the count of harness-executed tests.

The harness library is built by `make simt` (python csrc/simt/build.py) into build/simt/; the
environment variable GSPLAT_KIT_SIMT_LIB points the tests at another build (the ASan one, or a mutated
copy from scripts/check_simt_sensitivity.py). Without a build the harness tests are skipped, unless
GSPLAT_KIT_REQUIRE_SIMT=1 (as `make test` sets), which makes a missing or stale harness a failure.
"""
from __future__ import annotations

import contextlib
import json
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIMT_NAMESPACE = "gsplat_kit_simt"
_simt_state: dict = {}


def _required() -> bool:
    return os.environ.get("GSPLAT_KIT_REQUIRE_SIMT", "0") not in ("", "0")


def load_simt():
    """Loads the harness library once; returns None (with the reason in _simt_state) when it is not built."""
    if "ok" in _simt_state:
        return _simt_state["ok"]
    from gsplat_kit import _backend, _build_hash

    override = os.environ.get("GSPLAT_KIT_SIMT_LIB")
    lib = override or os.path.join(ROOT, "build", "simt", "gsplat_kit_simt.so")
    why = None
    if not os.path.exists(lib):
        why = f"the SIMT harness is not built ({lib}); run `make simt`"
    elif not override:  # the default build must match this checkout's sources
        try:
            with open(os.path.join(os.path.dirname(lib), "build_info.json")) as f:
                built = json.load(f)["sources_sha256"]
        except (OSError, ValueError, KeyError):
            built = None
        if built != _build_hash.sources_hash(ROOT, harness=True):
            why = f"the SIMT harness ({lib}) is stale: csrc/ changed since it was built; run `make simt`"
    if why is None:
        _backend.load()  # gsplat_kit._C first: the harness registers beside its ops
        torch.ops.load_library(lib)
        _backend.register_fakes(SIMT_NAMESPACE)
    _simt_state.update(ok=why is None, why=why)
    return _simt_state["ok"]


def require_simt():
    if not load_simt():
        if _required():
            pytest.fail(_simt_state["why"])
        pytest.skip(_simt_state["why"])


@contextlib.contextmanager
def on_backend(name: str):
    """Runs gsplat_kit's native calls on the CUDA kernels of `name`; yields the device for the tensors."""
    from gsplat_kit import _backend

    if name == "simt":
        require_simt()
        with _backend.use_ops(SIMT_NAMESPACE):
            yield "cpu"
    elif name == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA GPU visible")
        assert _backend.cuda_compiled(), "a GPU is visible but the CUDA kernels were not compiled in"
        yield "cuda"
    else:
        raise ValueError(f"kernel backend must be 'simt' or 'cuda', got {name!r}")


@pytest.fixture(params=["simt", "cuda"])
def kernel_backend(request):
    """The CUDA kernels on the SIMT harness (CPU tensors) or on a GPU; the value is the tensor device."""
    with on_backend(request.param) as device:
        yield device


def pytest_collection_modifyitems(config, items):
    """Marks every test that executes the CUDA kernels through the harness with `simt`."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        on_harness = params.get("kernel_backend") == "simt" or params.get("schedule") == "simt"  # schedule: test_edit_kernel
        if on_harness or os.path.basename(str(item.fspath)).startswith("test_simt_"):
            item.add_marker(pytest.mark.simt)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    counts = {}
    for outcome in ("passed", "failed", "error", "skipped"):
        for rep in terminalreporter.stats.get(outcome, []):
            if rep.when == "call" or outcome in ("skipped", "error"):
                if "simt" in getattr(rep, "keywords", {}):
                    counts[outcome] = counts.get(outcome, 0) + 1
    if counts:
        ran = counts.get("passed", 0) + counts.get("failed", 0)
        detail = ", ".join(f"{n} {k}" for k, n in counts.items())
        terminalreporter.write_line(f"SIMT harness: {ran} tests executed the CUDA kernels on the CPU ({detail})")


def pytest_configure(config):
    config.addinivalue_line("markers", "simt: executes the CUDA kernels through the SIMT harness (csrc/simt/)")
