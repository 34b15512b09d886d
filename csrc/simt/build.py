#!/usr/bin/env python
"""Builds the SIMT harness library: the CUDA kernels of csrc/ (the .cu files themselves) compiled as C++
against csrc/simt/ and linked with the op files, registering torch.ops.gsplat_kit_simt.*. Test-only:
setup.py and gsplat_kit._C never see it.

    python csrc/simt/build.py [--asan] [--root DIR] [--out DIR]

--root: the source tree to build (default: this checkout; scripts/check_simt_sensitivity.py builds a
mutated copy). --out: the build folder (default ROOT/build/simt, or ROOT/build/simt-asan with --asan).
Incremental (ninja with header dependencies). Prints the path of the library, beside which
build_info.json records the hash of the sources it was built from (gsplat_kit/_build_hash.py).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import sysconfig

HERE = os.path.dirname(os.path.abspath(__file__))
LIB_NAME = "gsplat_kit_simt.so"

# The harness module: the kernels (.cu, as C++), the op files that register them, the runtime and its
# self-test kernels. (ssim_cpu.cpp and the *_cpu.cpp kernels are CPU code: not part of it.)
SOURCES = [
    "csrc/bindings.cpp",
    "csrc/splat/splat_ops.cpp",
    "csrc/attention/attention_ops.cpp",
    "csrc/splat/projection.cu",
    "csrc/splat/sh.cu",
    "csrc/splat/isect.cu",
    "csrc/splat/rasterize.cu",
    "csrc/attention/attention.cu",
    "csrc/simt/simt.cpp",
    "csrc/simt/selftest.cu",
]


def _build_hash(root):
    spec = importlib.util.spec_from_file_location("_gk_build_hash", os.path.join(root, "gsplat_kit", "_build_hash.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _ninja_file(root: str, out: str, asan: bool, opt: str) -> str:
    from torch.utils import cpp_extension

    import torch

    inc = [os.path.join(root, "csrc", "simt", "shim"), os.path.join(root, "csrc", "include"), os.path.join(root, "csrc"),
           os.path.join(root, "csrc", "splat"), os.path.join(root, "csrc", "attention")]
    inc += cpp_extension.include_paths() + [sysconfig.get_paths()["include"]]
    abi = int(torch.compiled_with_cxx11_abi())
    cflags = ["-std=c++20", "-fPIC", "-DGK_SIMT", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-Wno-unused-function"]
    # -O1 under ASan keeps its reports exact and the build short; -O2 otherwise (the tests run the kernels).
    cflags += ["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"] if asan else [opt]
    ldflags = ["-shared"] + (["-fsanitize=address"] if asan else [])
    libdir = cpp_extension.library_paths()[0]
    ldflags += [f"-L{libdir}", f"-Wl,-rpath,{libdir}", "-lc10", "-ltorch_cpu"]
    q = lambda xs: " ".join(x.replace(" ", "$ ") for x in xs)  # noqa: E731
    lines = [
        f"cflags = {q(cflags + ['-I' + i for i in inc])}",
        f"ldflags = {q(ldflags)}",
        "rule cxx",
        "  command = c++ -MMD -MF $out.d $cflags -x c++ -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = CXX $in",
        "rule link",
        "  command = c++ $in -o $out $ldflags",
        "  description = LINK $out",
    ]
    objs = []
    for src in SOURCES:
        obj = os.path.join(out, "obj", src.replace("/", "_") + ".o")
        objs.append(obj)
        lines.append(f"build {obj}: cxx {os.path.join(root, src)}")
    lines.append(f"build {os.path.join(out, LIB_NAME)}: link {' '.join(objs)}")
    return "\n".join(lines) + "\n"


def build(root: str, out: str | None = None, asan: bool = False, quiet: bool = False, opt: str = "-O2") -> str:
    """Builds (incrementally) and returns the path of the harness library for the sources under root;
    opt: the optimisation flag without ASan (the mutation check builds -O1: it recompiles per fault)."""
    root = os.path.abspath(root)
    out = os.path.abspath(out or os.path.join(root, "build", "simt-asan" if asan else "simt"))
    os.makedirs(os.path.join(out, "obj"), exist_ok=True)
    text = _ninja_file(root, out, asan, opt)
    path = os.path.join(out, "build.ninja")
    if not os.path.exists(path) or open(path).read() != text:
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    ninja = os.path.join(os.path.dirname(sys.executable), "ninja")
    cmd = [ninja if os.path.exists(ninja) else "ninja", "-C", out] + (["--quiet"] if quiet else [])
    subprocess.run(cmd, check=True)
    info = {"sources_sha256": _build_hash(root).sources_hash(root, harness=True), "asan": asan}
    with open(os.path.join(out, "build_info.json.tmp"), "w") as f:
        json.dump(info, f)
    os.replace(os.path.join(out, "build_info.json.tmp"), os.path.join(out, "build_info.json"))
    return os.path.join(out, LIB_NAME)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--asan", action="store_true", help="build with AddressSanitizer (run python with LD_PRELOAD=libasan)")
    ap.add_argument("--root", default=os.path.dirname(os.path.dirname(HERE)), help="source tree to build")
    ap.add_argument("--out", default=None, help="build folder")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()
    print(build(a.root, a.out, a.asan, a.quiet))


if __name__ == "__main__":
    main()
