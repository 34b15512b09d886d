"""The CPU kernels' instruction sets (csrc/cpu_isa.h): a portable build holds the SIMD loops for AVX-512,
AVX2 and SSE2 and runs the best one the CPU has, or the one GSPLAT_KIT_ISA names; no other code in the
module uses AVX instructions, so that it loads and runs on any x86-64 CPU. (`make test-isa` runs the
whole CPU kernel test files once more for each set this CPU runs.)"""
import os
import re
import shutil
import subprocess
import sys

import pytest

from gsplat_kit import _backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ISAS = ("avx512", "avx2", "sse")


def _python(code: str, isa: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("GSPLAT_KIT_ISA", None)
    if isa is not None:
        env["GSPLAT_KIT_ISA"] = isa
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_describe_names_the_instruction_set():
    isa, choices = _backend.cpu_isa(), _backend.cpu_isa_choices()
    assert isa in choices and f"SIMD {isa} " in _backend.describe()
    if _backend.load().cpu_isa_dispatch():
        assert set(choices) <= set(ISAS) and choices[-1] == "sse"  # every x86-64 CPU runs SSE2
        assert [c for c in ISAS if c in choices] == choices  # best first
        if not os.environ.get("GSPLAT_KIT_ISA"):
            assert isa == choices[0]


# Each set's kernels against the pure-PyTorch references: the rasteriser forward and gradients (float32:
# the vector loops), the SSIM loss and its gradient, the attention kernel (its vector softmax).
_KERNEL_CHECK = r"""
import sys, torch
sys.path.insert(0, "tests")
from gsplat_kit import _backend, rasterization
from gsplat_kit.render.reference import rasterization_reference
from gsplat_kit.train.losses import ssim
from gsplat_kit.edit.kernel import fused_attention, reference_attention
from gsplat_kit.edit.plan import LayerPlan
from test_render_rasterization import make_scene

print(_backend.cpu_isa())
scene = make_scene(300, 2, 48, 40)
leaves = {k: scene[k].requires_grad_() for k in ("means", "quats", "scales", "opacities", "colors")}
outs = [f(**scene, sh_degree=3) for f in (rasterization, rasterization_reference)]
w = torch.rand_like(outs[0][0])
grads = [torch.autograd.grad((c * w).sum() + a.sum(), list(leaves.values())) for c, a, _ in outs]
assert (outs[0][0] - outs[1][0]).abs().max() < 1e-5 and (outs[0][1] - outs[1][1]).abs().max() < 1e-5
for name, g1, g2 in zip(leaves, *grads):
    assert (g1 - g2).abs().max() <= 1e-3 * g2.abs().max() + 1e-6, name

a = torch.rand(2, 3, 37, 29, requires_grad=True)
b = torch.rand(2, 3, 37, 29)
sn, st = ssim(a, b, impl="native"), ssim(a, b, impl="torch")
(gn,), (gt,) = torch.autograd.grad(sn, a), torch.autograd.grad(st, a)
assert abs(sn.item() - st.item()) < 1e-5 and (gn - gt).abs().max() <= 1e-4 * gt.abs().max()

q, k, v = (torch.randn(6, 70, 40), torch.randn(6, 77, 40), torch.randn(6, 77, 40))
plan = LayerPlan([-1, 0], [-1, -1], [-1, -1])  # the second element takes the first's maps: the native kernel
out, ref = fused_attention(q, k, v, 0.16, 3, plan), reference_attention(q, k, v, 0.16, 3, plan)
assert (out - ref).abs().max() < 1e-5, (out - ref).abs().max()
"""


@pytest.mark.parametrize("isa", ISAS)
def test_each_instruction_set_matches_the_references(isa):
    choices = _backend.cpu_isa_choices()
    if isa not in choices:
        pytest.skip(f"this CPU or build does not run {isa} kernels ({', '.join(choices)})")
    r = _python(_KERNEL_CHECK, isa)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[0] == isa


def test_a_set_the_build_or_cpu_lacks_is_refused_by_name():
    r = _python("from gsplat_kit import _backend; _backend.load()", "avx1024")
    assert r.returncode != 0 and "UserError: GSPLAT_KIT_ISA=avx1024: " in r.stderr
    assert re.search(r"choose one of: [a-z0-9, ]+\)|compiled for one CPU", r.stderr)
    missing = [isa for isa in ISAS if isa not in _backend.cpu_isa_choices()]
    if _backend.load().cpu_isa_dispatch() and missing:  # e.g. avx512 on a CPU without it
        r = _python("from gsplat_kit import _backend; _backend.load()", missing[0])
        assert r.returncode != 0 and f"this CPU does not run {missing[0]} code" in r.stderr


def test_only_the_kernel_sets_use_avx_instructions():
    """The trap of per-ISA objects: an inline function or template compiled with AVX in one of them and
    picked by the linker for every caller. In the module, any function with a VEX/EVEX instruction (AVX,
    ymm/zmm or mask registers) must be in gk::isa_avx2 or gk::isa_avx512 (setup.py also refuses an object
    that defines anything outside its namespace)."""
    if not _backend.load().cpu_isa_dispatch():
        pytest.skip("a build for one CPU (GSPLAT_KIT_MARCH) uses its instructions everywhere")
    if shutil.which("objdump") is None:
        pytest.skip("objdump (binutils) not installed")
    import gsplat_kit._C as C

    text = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", C.__file__], check=True,
                          capture_output=True, text=True).stdout
    wide = re.compile(r"\t(v[a-z0-9]+) |%[yz]mm\d|%k[0-7]")
    func, in_sets, stray = None, set(), {}
    for line in text.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if m:
            func = m.group(1)
        elif func and wide.search(line):
            if "gk::isa_avx2::" in func or "gk::isa_avx512::" in func:
                in_sets.add(func)
            else:
                stray.setdefault(func, line.strip())
    assert not stray, "AVX instructions outside the kernel sets: " + "; ".join(f"{f}: {i}" for f, i in list(stray.items())[:5])
    # the check sees the sets' own wide code (else it could not fail)
    assert any("isa_avx512::" in f for f in in_sets) and any("isa_avx2::" in f for f in in_sets)
