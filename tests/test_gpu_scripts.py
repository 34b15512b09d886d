"""The one-call GPU check (scripts/gpu_prep.sh, scripts/gpu_check.sh): what can be checked without a GPU, so
that a lent machine's minutes are not spent on a typo. The full dry run (`bash scripts/gpu_check.sh
--dry-run`) needs `make gpu-prep`'s toolchain and is run by hand (BENCHMARKS.md)."""
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")


def _read(name):
    with open(os.path.join(SCRIPTS, name)) as f:
        return f.read()


def _pins(text):
    """name -> version for `name==version` lines (names normalised as pip does)."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^\s*([A-Za-z0-9_.-]+)==([^\s#;]+)", line)
        if m:
            out[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return out


@pytest.mark.parametrize("script", ["gpu_prep.sh", "gpu_check.sh", "gpu_cuda_home.sh"])
def test_shell_scripts_parse(script):
    r = subprocess.run(["bash", "-n", os.path.join(SCRIPTS, script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_carried_wheels_keep_the_project_pins():
    """A wheel carried to the GPU machine is the version the project tests here."""
    carried = _pins(_read("gpu_wheels.txt"))
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        pinned = _pins(f.read())
    assert {"diffusers", "viser", "plyfile"} <= set(carried)
    for name, version in carried.items():
        if name in pinned:
            assert version == pinned[name], f"{name}: gpu_wheels.txt {version}, requirements.txt {pinned[name]}"


def _invocations(shell_text):
    """(script, [--flags]) for every `scripts/NAME.py ...` command in a shell script, continuation lines joined."""
    joined = shell_text.replace("\\\n", " ")
    return [(m.group(1), re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", m.group(2)))
            for m in re.finditer(r"scripts/(\w+\.py)([^\n]*)", joined)]


def test_every_flag_the_gpu_check_passes_exists():
    calls = _invocations(_read("gpu_check.sh"))
    assert {s for s, _ in calls} >= {"bench_raster.py", "bench_attention.py", "bench_viewer.py", "bench_train.py",
                                     "bench_train_gsplat.py"}
    for script, flags in calls:
        src = _read(script)
        declared = set(re.findall(r"add_argument\(\s*\"(--[a-z][a-z0-9-]*)\"", src))
        missing = [f for f in flags if f not in declared]
        assert not missing, f"gpu_check.sh passes {missing} to scripts/{script}, which declares {sorted(declared)}"


def test_the_flag_check_has_teeth():
    calls = _invocations('x "$PY" scripts/bench_viewer.py --devices cuda \\\n    --jsn "$OUT/v.json"\n')
    assert calls == [("bench_viewer.py", ["--devices", "--jsn"])]


def test_gpu_check_refuses_an_unknown_option(tmp_path):
    r = subprocess.run(["bash", os.path.join(SCRIPTS, "gpu_check.sh"), "--dryrun"], capture_output=True, text=True,
                       env={**os.environ, "OUT": str(tmp_path)}, timeout=60)
    assert r.returncode == 2 and "unknown option --dryrun" in r.stderr
    assert not os.listdir(tmp_path)   # refused before anything ran


def test_gpu_check_help_names_what_comes_back():
    r = subprocess.run(["bash", os.path.join(SCRIPTS, "gpu_check.sh"), "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0
    for name in ("summary.json", "raster.json", "attention.json", "viewer.json", "train.json", "--dry-run"):
        assert name in r.stdout
