"""Builds the one native module, gsplat_kit._C, against the torch already installed, and installs the
package with the `gsplat-kit` command:

    pip install --no-build-isolation .          (or a wheel: python -m build --wheel --no-isolation)
    make build                                  (the repository's .venv; in place, incremental)

C++ CPU kernels (OpenMP) are always built. CUDA kernels are added when the installed torch is a CUDA
build (torch.version.cuda) *and* nvcc is found; set GSPLAT_KIT_NO_CUDA=1 to build CPU only.
Target GPU architectures: TORCH_CUDA_ARCH_LIST (torch's own variable) or GSPLAT_KIT_CUDA_ARCH,
default below.

CPU instruction sets: by default the module runs on any x86-64 CPU. The kernels' SIMD loops
(CPU_ISA_SOURCES) are compiled once per instruction set (AVX-512, AVX2, SSE2) and the best one the CPU
runs is chosen at run time (csrc/cpu_isa.h); the rest is plain x86-64 code. GSPLAT_KIT_MARCH=native (or
another -march target) compiles everything for that CPU instead, with one set of kernels.

A record of the build (the hash of every source file, the torch it was built against, the CPU target) is
written to gsplat_kit/_build_info.json, so that gsplat_kit._backend can tell a stale build from a fresh
one and explain a module built for another torch.
"""
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _load_by_path(name):
    """gsplat_kit/<name>.py by path: importing the package would import torch (and a stale _C)."""
    spec = importlib.util.spec_from_file_location("_gk" + name, os.path.join(ROOT, "gsplat_kit", name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_build_hash = _load_by_path("_build_hash")
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


def _torch():
    try:
        import torch
    except ImportError:
        sys.exit("gsplat_kit builds its kernels against the torch already installed, and none is importable "
                 f"by {sys.executable}: install torch first, then `pip install --no-build-isolation .` "
                 "(build isolation would hide the installed torch).")
    return torch


def want_cuda():
    torch = _torch()

    if os.environ.get("GSPLAT_KIT_NO_CUDA", "0") not in ("", "0"):
        return False, "GSPLAT_KIT_NO_CUDA is set"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build"
    home = find_cuda_home()
    if home is None:
        return False, "nvcc and the CUDA headers not found (set CUDA_HOME)"
    os.environ["CUDA_HOME"] = home  # read by torch.utils.cpp_extension when first imported
    return True, f"torch CUDA {torch.version.cuda}, CUDA toolkit in {home}"


# The CPU kernel files compiled once per instruction set (csrc/cpu_isa.h), and the x86-64 levels of the
# sets, lowest first.
CPU_ISA_SOURCES = ["csrc/splat/rasterize_cpu.cpp", "csrc/loss/ssim_cpu.cpp", "csrc/attention/attention_rows_cpu.cpp"]
X86_ISAS = {"sse": "x86-64", "avx2": "x86-64-v3", "avx512": "x86-64-v4"}


def cpu_target():
    """(-march for the whole module or None, {instruction set: its extra flags}, a description)."""
    march = os.environ.get("GSPLAT_KIT_MARCH", "")
    portable = os.environ.get("GSPLAT_KIT_PORTABLE", "0") not in ("", "0")
    if march and not portable:
        return march, {"native": []}, f"-march={march}"
    if platform.machine().lower() in ("x86_64", "amd64"):
        return None, {isa: [f"-march={level}", "-mtune=generic"] for isa, level in X86_ISAS.items()}, \
            "x86-64, SIMD kernels for " + ", ".join(X86_ISAS) + " chosen at run time"
    return None, {"native": []}, f"{platform.machine()} (default target)"


def make_extension():
    files = _build_hash.source_files(ROOT)  # csrc/ without the test-only harness (csrc/simt/)
    cuda, why = want_cuda()
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    march, isas, target = cpu_target()
    print(f"[gsplat_kit] CUDA kernels: {'yes' if cuda else 'no'} ({why})")
    print(f"[gsplat_kit] CPU target: {target}")
    cpp = [f for f in files if f.endswith(".cpp") and f not in CPU_ISA_SOURCES]
    cu = [f for f in files if f.endswith(".cu")]
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
    if march:
        cxx.append("-march=" + march)
    define = [("GSPLAT_KIT_WITH_CUDA", "1" if cuda else "0"), ("GK_CPU_DISPATCH", "0" if "native" in isas else "1")]
    common = dict(include_dirs=[os.path.join(ROOT, "csrc", "include")], define_macros=define,
                  extra_link_args=["-fopenmp"], depends=files)
    if cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", os.environ.get("GSPLAT_KIT_CUDA_ARCH", DEFAULT_CUDA_ARCH))
        print(f"[gsplat_kit] CUDA architectures: {os.environ['TORCH_CUDA_ARCH_LIST']}")
        nvcc = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]
        ext = CUDAExtension("gsplat_kit._C", cpp + cu, extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **common)
    else:
        ext = CppExtension("gsplat_kit._C", cpp, extra_compile_args={"cxx": cxx}, **common)
    ext.cpu_isas = isas  # compiled by Build.build_extension
    ext.build_info = {"torch": _torch().__version__, "cuda": cuda, "cpu_target": target}
    return ext, files


def compile_cpu_isas(build, ext):
    """Compiles CPU_ISA_SOURCES once per instruction set of ext.cpu_isas, each into its own folder, checks
    that each object defines nothing outside its namespace gk::isa_<set> (csrc/cpu_isa.h), and returns the
    objects, lowest set first."""
    base = ext.extra_compile_args["cxx"]  # with what torch's BuildExtension added (ABI, extension name)
    objects = []
    for isa, flags in ext.cpu_isas.items():
        objs = build.compiler.compile(
            CPU_ISA_SOURCES, output_dir=os.path.join(build.build_temp, "isa", isa),
            macros=ext.define_macros + [("GK_CPU_ISA", isa)], include_dirs=ext.include_dirs,
            extra_postargs=base + flags, depends=ext.depends)
        for obj in objs:
            check_isa_object(obj, isa)
        objects += objs
    return objects


def check_isa_object(obj, isa):
    """An inline function or template that a per-ISA object shares with other objects could be linked
    into every caller with this set's instructions: refuse the build instead."""
    out = subprocess.run(["nm", "-C", "-g", "--defined-only", obj], check=True, capture_output=True, text=True).stdout
    stray = [line.split(" ", 2)[-1] for line in out.splitlines()
             if line.strip() and f"gk::isa_{isa}::" not in line and "DW.ref.__gxx_personality_v0" not in line]
    if stray:
        sys.exit(f"{obj}: defines symbols outside gk::isa_{isa} (csrc/cpu_isa.h), which the linker could share "
                 "with code for other CPUs: " + "; ".join(stray[:5]))


def write_build_info(folder, info, backdate=None):
    """Writes info beside the module; backdate: a time to date the record at (before the build started,
    when a source was edited during it: the module is stale, and make must see the record as older)."""
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, "_build_info.json.tmp")
    with open(tmp, "w") as f:
        json.dump(info, f)
    if backdate is not None:
        os.utime(tmp, (backdate, backdate))
    os.replace(tmp, os.path.join(folder, "_build_info.json"))


# What the package imports at run time, beyond torch (tests/test_wheel.py checks that every import is
# covered). Lower bounds at the API generations the code is written for; CI runs the pins of
# requirements.txt. The extras' libraries are imported only by their verbs.
INSTALL_REQUIRES = [
    "numpy>=1.24", "scipy>=1.10", "Pillow>=10.0", "opencv-python-headless>=4.8", "plyfile>=1.0",
    "zstandard>=0.21", "tqdm>=4.60", "imageio>=2.30", "imageio-ffmpeg>=0.4.9",
    "pycolmap>=4.0",  # sfm, and scenes made of raw images
    "viser>=1.0",  # the viewer
]
EXTRAS_REQUIRE = _load_by_path("_extras").extras_require()  # edit (diffusers, ...), synth (torch-pruning), all


def torch_requirement(version):
    """The torch a built module needs: the one it was compiled against (its C++ ABI), as torchvision's
    wheels pin theirs. The local label (+cu130) is left out, so that any build of that release satisfies
    it, and the torch that built it always does: pip never replaces it."""
    return "torch==" + version.split("+")[0]


def main():
    # GSPLAT_KIT_SKIP_EXT=1: package metadata only (the Makefile's editable install; the module is
    # then built in place by `setup.py build_ext --inplace`, incrementally).
    skip = os.environ.get("GSPLAT_KIT_SKIP_EXT", "0") not in ("", "0")
    ext, files = (None, []) if skip else make_extension()
    from torch.utils.cpp_extension import BuildExtension

    class Build(BuildExtension):
        def finalize_options(self):
            super().finalize_options()
            # Object folders per configuration (CPU only or with CUDA; portable or for one CPU), so that
            # switching does not rebuild all.
            cuda_on = ext is not None and ext.build_info["cuda"]
            one_cpu = ext is not None and "native" in ext.cpu_isas and os.environ.get("GSPLAT_KIT_MARCH")
            name = ("cuda" if cuda_on else "cpu") + (f"-march-{os.environ['GSPLAT_KIT_MARCH']}" if one_cpu else "")
            self.build_temp = os.path.join(ROOT, "build", name)

        def build_extension(self, e):
            # The per-ISA objects link after the others, lowest set first.
            e.extra_objects = compile_cpu_isas(self, e)
            super().build_extension(e)

        def run(self):
            # The hash of the sources as the build starts: one edited during the build leaves it stale.
            started, info = time.time(), {"sources_sha256": _build_hash.sources_hash(ROOT), **ext.build_info}
            super().run()
            backdate = None
            if _build_hash.sources_hash(ROOT) != info["sources_sha256"]:
                backdate = started - 1
                print("[gsplat_kit] csrc/ changed during the build: the module is stale; build again")
            # Beside the module it describes: in the source tree for in-place (and editable) builds, in
            # the build folder that a wheel is made from otherwise.
            if self.inplace or getattr(self, "editable_mode", False):
                write_build_info(os.path.join(ROOT, "gsplat_kit"), info, backdate)
            if not self.inplace:
                write_build_info(os.path.join(self.build_lib, "gsplat_kit"), info, backdate)

    setup(
        name="gsplat_kit",
        version="0.1.0",
        description="CUDA-accelerated 3D Gaussian Splatting, Prompt-to-Prompt editing and data-free synthesis",
        packages=find_packages(include=["gsplat_kit", "gsplat_kit.*"]),
        python_requires=">=3.10",
        install_requires=INSTALL_REQUIRES + ([] if skip else [torch_requirement(ext.build_info["torch"])]),
        extras_require=EXTRAS_REQUIRE,
        ext_modules=[] if skip else [ext],
        cmdclass={"build_ext": Build.with_options(use_ninja=True)},
        entry_points={"console_scripts": ["gsplat-kit=gsplat_kit.cli:main"]},
    )


if __name__ == "__main__":
    main()
