"""End to end on a real capture: the CLI trains cup_kwrous (../shared/data, 200x150 px) on the CPU and
reaches a held-out PSNR threshold; the outputs load back."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUP = os.path.join(os.path.dirname(ROOT), "shared", "data", "cup_kwrous")

pytestmark = pytest.mark.slow
# sleeping (not spinning) OpenMP threads: on a CPU shared with other jobs this is several times faster
ENV = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


@pytest.mark.skipif(not os.path.isdir(CUP), reason=f"{CUP} not present")
def test_train_cup_reaches_heldout_psnr(tmp_path):
    out = tmp_path / "cup"
    # 300 steps, densifying at 150/200/250: the 3DGS schedule starts at 500, after this budget, and a CPU
    # test cannot afford more (BENCHMARKS.md has training speeds)
    cmd = [sys.executable, "-m", "gsplat_kit.cli", "train", "--data", CUP, "--data-factor", "4", "--out", str(out),
           "--steps", "300", "--ckpt-every", "150", "--no-progress",
           "--strategy-opt", "refine_start_iter=100", "--strategy-opt", "refine_every=50"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900, env=ENV)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "held-out PSNR" in r.stdout
    m = json.loads((out / "metrics.json").read_text())
    # Measured (2-core CPU, this recipe, seed 0): the SfM initialisation scores 11.3 dB on the 10 held-out
    # views (every 8th of 77); after 300 steps 22.9 dB, SSIM 0.80 (23.1-23.3 dB with other seeds/schedules). 20 dB sits 3 dB under the
    # measured figure and 9 dB over the untrained initialisation, so a broken loss, optimizer, camera
    # convention or densification step fails it while run-to-run noise does not.
    assert m["num_test_views"] == 10
    assert m["psnr"] > 20.0, m["psnr"]
    assert m["ssim"] > 0.70, m["ssim"]
    assert m["num_gaussians"] > 9262          # densification added Gaussians to the 9,262 SfM points
    assert len(m["per_image"]) == 10 and all(p["psnr"] > 15.0 for p in m["per_image"])
    assert len(os.listdir(out / "eval" / "render")) == 10 and len(os.listdir(out / "eval" / "gt")) == 10
    # the exported .ply loads back with the same Gaussians, and `eval` on it reproduces the figure
    from gsplat_kit.scene import load_ply

    splats = load_ply(str(out / "point_cloud.ply"))
    assert splats["means"].shape[0] == m["num_gaussians"]
    r = subprocess.run([sys.executable, "-m", "gsplat_kit.cli", "eval", "--splats", str(out / "point_cloud.ply"),
                        "--data", CUP, "--data-factor", "4", "--out", str(tmp_path / "ev"), "--no-progress"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600, env=ENV)
    assert r.returncode == 0, r.stdout + r.stderr
    m2 = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert abs(m2["psnr"] - m["psnr"]) < 0.05
