"""Packaging: `python -m build --wheel --no-isolation` makes a wheel that installs into a fresh virtual
environment beside an existing torch and runs there (the native module, the `gsplat-kit` command and every
verb's --help), and the package declares every library it imports."""
import ast
import fcntl
import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
import zipfile

import pytest
import torch

from gsplat_kit import _backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup_module():
    """setup.py as a module (its main() only runs as a script)."""
    spec = importlib.util.spec_from_file_location("_gk_setup", os.path.join(ROOT, "setup.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r.stdout


# import name -> distribution, where they differ
_DISTRIBUTION = {"PIL": "pillow", "cv2": "opencv-python-headless", "torch_pruning": "torch-pruning",
                 "imageio_ffmpeg": "imageio-ffmpeg"}
# imported through a required library that depends on them (viser), or by a path that says what to
# install (torchvision for LPIPS: it must match torch, so it is never pulled in for the user)
_INDIRECT = {"msgspec", "websockets", "torchvision"}


def _third_party_imports() -> set[str]:
    names = set()
    for folder, _, files in os.walk(os.path.join(ROOT, "gsplat_kit")):
        for f in files:
            if not f.endswith(".py"):
                continue
            for node in ast.walk(ast.parse(open(os.path.join(folder, f)).read())):
                if isinstance(node, ast.Import):
                    names |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("gsplat_kit", "__future__", "torch")}


def test_every_imported_library_is_a_declared_dependency():
    setup = _setup_module()
    declared = {r.split(">")[0].split("=")[0].split("<")[0].strip().lower()
                for r in setup.INSTALL_REQUIRES + setup.EXTRAS_REQUIRE["all"]}
    missing = {n for n in _third_party_imports() - _INDIRECT if _DISTRIBUTION.get(n, n).lower() not in declared}
    assert not missing, f"imported by gsplat_kit but not in setup.py's requirements: {sorted(missing)}"
    # the required ones carry what the CLI's verbs import at the top of their modules (--help works)
    assert {"numpy", "plyfile", "opencv-python-headless", "pillow", "viser"} <= {
        r.split(">")[0].lower() for r in setup.INSTALL_REQUIRES}
    assert setup.torch_requirement("2.14.1+cu130") == "torch==2.14.1"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel, built from this checkout with the configuration of its in-place build (so that the
    compiled objects in build/ are reused and only the link runs)."""
    out = tmp_path_factory.mktemp("dist")
    info = _backend.build_info()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GSPLAT_KIT_")}
    if not info.get("cuda", False):
        env["GSPLAT_KIT_NO_CUDA"] = "1"
    with open(os.path.join(ROOT, ".build.lock"), "a") as lock:  # as `make build` does: one build at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), ROOT], cwd=ROOT, env=env)
    (whl,) = out.glob("gsplat_kit-*.whl")
    return whl


def test_wheel_holds_the_module_and_its_requirements(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        info = json.loads(z.read("gsplat_kit/_build_info.json"))
    assert any(n.startswith("gsplat_kit/_C.") and n.endswith(".so") for n in names)
    assert "gsplat_kit/cli.py" in names and "gsplat_kit/viewer/server.py" in names
    assert info["torch"] == torch.__version__ and "chosen at run time" in info["cpu_target"]
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    assert f"torch=={torch.__version__.split('+')[0]}" in requires
    assert any(r.startswith("numpy") for r in requires) and any("extra == \"edit\"" in r for r in requires)
    assert wheel.name.endswith("-linux_x86_64.whl") or "x86_64" not in wheel.name


_SMOKE = r"""
import math, sys, torch, gsplat_kit
from gsplat_kit import _backend, rasterization
from gsplat_kit.cli import build_parser
assert gsplat_kit.__file__.startswith(sys.prefix), gsplat_kit.__file__  # the installed copy
print(_backend.describe())
g = torch.Generator().manual_seed(0)
N = 200
means = torch.randn(N, 3, generator=g) * 0.5
quats = torch.randn(N, 4, generator=g)
scales = torch.full((N, 3), 0.05)
opac = torch.full((N,), 0.8)
colors = torch.rand(N, 3, generator=g)
view = torch.eye(4)[None].clone()
view[0, 2, 3] = 3.0
K = torch.tensor([[[60.0, 0, 32], [0, 60.0, 24], [0, 0, 1]]])
img, alpha, _ = rasterization(means, quats, scales, opac, colors, view, K, 64, 48)
assert img.shape == (1, 48, 64, 3) and torch.isfinite(img).all() and alpha.max() > 0.5
for verb in build_parser()._subparsers._group_actions[0].choices:
    try:
        build_parser().parse_args([verb, "--help"])
    except SystemExit as e:
        assert e.code == 0, verb
print("verbs ok")
"""


def test_wheel_installs_and_runs_in_a_fresh_venv(wheel, tmp_path):
    """A venv without the package, which sees this environment's torch and libraries (a path line in
    a .pth file); the wheel goes in with pip, and runs from there."""
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    site = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
    with open(os.path.join(site, "outer.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")  # torch and the libraries, not their .pth hooks
    pip = [sys.executable, "-m", "pip", "--python", str(py)]
    # --force-reinstall: the checkout's own editable install is visible through that path too
    _run(pip + ["install", "-q", "--no-index", "--no-deps", "--force-reinstall", str(wheel)])
    _run(pip + ["check"])  # the wheel's requirements (torch==the build's included) are met
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("GSPLAT_KIT_")}
    out = _run([str(py), "-c", _SMOKE], cwd=tmp_path, env=env)
    assert f"SIMD {_backend.cpu_isa()} (chosen at run time" in out and "verbs ok" in out
    assert "train" in _run([str(venv / "bin" / "gsplat-kit"), "--help"], cwd=tmp_path, env=env)
    forced = _run([str(py), "-c", "from gsplat_kit import _backend; print(_backend.cpu_isa())"], cwd=tmp_path,
                  env={**env, "GSPLAT_KIT_ISA": "sse"})
    assert forced.strip() == "sse"
