"""Builds the one native module, gsplat_kit._C.

C++ CPU kernels (OpenMP) are always built. CUDA kernels are added when the installed torch is a
CUDA build (torch.version.cuda) *and* nvcc is found; set GSPLAT_KIT_NO_CUDA=1 to build CPU only.
Target GPU architectures: TORCH_CUDA_ARCH_LIST (torch's own variable) or GSPLAT_KIT_CUDA_ARCH,
default below. A hash of every source file is written to gsplat_kit/_build_info.json so that
gsplat_kit._backend can tell a stale build from a fresh one.
"""
import importlib.util
import json
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _load_build_hash():
    """gsplat_kit/_build_hash.py by path: importing the package would import torch (and a stale _C)."""
    spec = importlib.util.spec_from_file_location("_gk_build_hash", os.path.join(ROOT, "gsplat_kit", "_build_hash.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_build_hash = _load_build_hash()
# Turing .. Blackwell; the +PTX entry lets newer GPUs JIT the kernels.
DEFAULT_CUDA_ARCH = "7.5;8.0;8.6;8.9;9.0;12.0+PTX"




def find_cuda_home():
    """A toolkit folder with bin/nvcc *and* the headers: $CUDA_HOME, $CUDA_PATH, /usr/local/cuda, or
    the one above the nvcc on PATH. (A wrapper script on PATH, as on some machines, would otherwise make
    torch guess a folder without headers.)"""
    import shutil

    on_path = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    if on_path:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(on_path))))
    for c in candidates:
        if c and os.path.exists(os.path.join(c, "bin", "nvcc")) and os.path.exists(os.path.join(c, "include", "cuda_runtime_api.h")):
            return c
    return None


def want_cuda():
    import torch

    if os.environ.get("GSPLAT_KIT_NO_CUDA", "0") not in ("", "0"):
        return False, "GSPLAT_KIT_NO_CUDA is set"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build"
    home = find_cuda_home()
    if home is None:
        return False, "nvcc and the CUDA headers not found (set CUDA_HOME)"
    os.environ["CUDA_HOME"] = home  # read by torch.utils.cpp_extension when first imported
    return True, f"torch CUDA {torch.version.cuda}, CUDA toolkit in {home}"


def make_extension():
    files = _build_hash.source_files(ROOT)  # csrc/ without the test-only harness (csrc/simt/)
    cuda, why = want_cuda()
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    print(f"[gsplat_kit] CUDA kernels: {'yes' if cuda else 'no'} ({why})")
    cpp = [f for f in files if f.endswith(".cpp")]
    cu = [f for f in files if f.endswith(".cu")]
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
    # The CPU kernels vectorise over a tile row; let the compiler use this machine's widest SIMD
    # (GSPLAT_KIT_PORTABLE=1 builds for any x86-64 instead, e.g. for a binary shipped elsewhere;
    # GSPLAT_KIT_MARCH picks another target, e.g. x86-64-v3 for AVX2).
    if os.environ.get("GSPLAT_KIT_PORTABLE", "0") in ("", "0"):
        cxx.append("-march=" + os.environ.get("GSPLAT_KIT_MARCH", "native"))
    define = [("GSPLAT_KIT_WITH_CUDA", "1" if cuda else "0")]
    if cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", os.environ.get("GSPLAT_KIT_CUDA_ARCH", DEFAULT_CUDA_ARCH))
        print(f"[gsplat_kit] CUDA architectures: {os.environ['TORCH_CUDA_ARCH_LIST']}")
        nvcc = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]
        return CUDAExtension(
            "gsplat_kit._C", cpp + cu, include_dirs=[os.path.join(ROOT, "csrc", "include")],
            define_macros=define, extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=["-fopenmp"],
        ), files
    return CppExtension(
        "gsplat_kit._C", cpp, include_dirs=[os.path.join(ROOT, "csrc", "include")],
        define_macros=define, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"],
    ), files


def write_build_info():
    info = {"sources_sha256": _build_hash.sources_hash(ROOT)}
    tmp = os.path.join(ROOT, "gsplat_kit", "_build_info.json.tmp")
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, os.path.join(ROOT, "gsplat_kit", "_build_info.json"))


def main():
    # GSPLAT_KIT_SKIP_EXT=1: package metadata only (the Makefile's editable install; the module is
    # then built in place by `setup.py build_ext --inplace`, incrementally).
    skip = os.environ.get("GSPLAT_KIT_SKIP_EXT", "0") not in ("", "0")
    ext, files = (None, []) if skip else make_extension()
    from torch.utils.cpp_extension import BuildExtension

    class Build(BuildExtension):
        def finalize_options(self):
            super().finalize_options()
            # Separate object folders for CPU-only and CUDA builds, so switching does not rebuild all.
            cuda_on = ext is not None and any(s.endswith(".cu") for s in ext.sources)
            self.build_temp = os.path.join(ROOT, "build", "cuda" if cuda_on else "cpu")

        def run(self):
            super().run()
            write_build_info()

    setup(
        name="gsplat_kit",
        version="0.1.0",
        description="CUDA-accelerated 3D Gaussian Splatting, Prompt-to-Prompt editing and data-free synthesis",
        packages=find_packages(include=["gsplat_kit", "gsplat_kit.*"]),
        python_requires=">=3.10",
        ext_modules=[] if skip else [ext],
        cmdclass={"build_ext": Build.with_options(use_ninja=True)},
        entry_points={"console_scripts": ["gsplat-kit=gsplat_kit.cli:main"]},
    )


if __name__ == "__main__":
    main()
