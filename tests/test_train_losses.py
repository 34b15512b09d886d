"""Losses, metrics, schedules, initialisation and checkpoint files."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gsplat_kit.train import checkpoint as ckpt
from gsplat_kit.train.init import init_splats, rgb_to_sh, sh_to_rgb
from gsplat_kit.train.losses import photometric_loss, psnr, ssim
from gsplat_kit.train.metrics import LPIPS, load_lpips
from gsplat_kit.train.schedules import exponential_lr, sh_degree_at


def _ssim_2d(a, b):
    """Textbook SSIM with a full 11x11 Gaussian window, five separate convolutions."""
    x = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-x ** 2 / (2 * 1.5 ** 2))
    g = g / g.sum()
    w = (g[:, None] * g[None, :]).to(a.dtype).expand(a.shape[1], 1, 11, 11)
    f = lambda t: F.conv2d(t, w, padding=5, groups=a.shape[1])
    mu1, mu2 = f(a), f(b)
    s11, s22, s12 = f(a * a) - mu1 ** 2, f(b * b) - mu2 ** 2, f(a * b) - mu1 * mu2
    C1, C2 = 0.01 ** 2, 0.03 ** 2
    return (((2 * mu1 * mu2 + C1) * (2 * s12 + C2)) / ((mu1 ** 2 + mu2 ** 2 + C1) * (s11 + s22 + C2))).mean()


def test_fast_ssim_matches_full_window():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 37, 45, generator=g, dtype=torch.float64)
    b = (a + 0.1 * torch.randn(a.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    assert abs(float(ssim(a, b)) - float(_ssim_2d(a, b))) < 1e-10
    assert abs(float(ssim(a, a)) - 1.0) < 1e-10
    assert float(ssim(a, torch.rand(a.shape, generator=g, dtype=torch.float64))) < 0.2
    # both separable paths (shifted sums: CPU; depthwise conv: GPU) agree, also without padding
    from gsplat_kit.train.losses import _blur_conv, _blur_shifted, _gauss_1d

    w = _gauss_1d(11, 1.5, a.device, a.dtype)
    for pad in (5, 0):
        assert torch.allclose(_blur_conv(a, w, pad), _blur_shifted(a, w.tolist(), pad), atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 3, 37, 45), (1, 3, 9, 7), (1, 1, 64, 23)])
def test_native_ssim_matches_torch_path(shape):
    """The CPU kernel (csrc/loss/ssim_cpu.cpp) against the torch path: the map, and the gradient to the
    render by float64 gradcheck and against autograd through the torch ops (images smaller than the
    window included)."""
    g = torch.Generator().manual_seed(2)
    a = torch.rand(shape, generator=g, dtype=torch.float64)
    b = (a + 0.2 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    for reduce in (True, False):
        assert torch.allclose(ssim(a, b, reduce=reduce, impl="native"), ssim(a, b, reduce=reduce, impl="torch"), atol=1e-12)
    x = a.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ssim(t, b, reduce=False, impl="native"), (x,))
    w = torch.rand(shape[0], generator=g, dtype=torch.float64)  # a non-uniform upstream gradient
    (gn,) = torch.autograd.grad((ssim(x, b, reduce=False, impl="native") * w).sum(), x)
    (gt,) = torch.autograd.grad((ssim(x, b, reduce=False, impl="torch") * w).sum(), x)
    assert torch.allclose(gn, gt, atol=1e-12) and gn.abs().sum() > 0
    # float32 (the training path) agrees too
    a32, b32 = a.float().requires_grad_(), b.float()
    (g32,) = torch.autograd.grad(ssim(a32, b32, impl="native"), a32)
    (g64,) = torch.autograd.grad(ssim(x, b, impl="torch"), x)
    assert (g32.double() - g64).abs().max() <= 1e-5 * g64.abs().max()


def test_ssim_picks_the_native_kernel_on_the_cpu():
    a = torch.rand(1, 3, 16, 16, requires_grad=True)
    b = torch.rand(1, 3, 16, 16)
    native = lambda out: type(out.grad_fn.next_functions[0][0]).__name__ == "_NativeSSIMBackward"  # noqa: E731
    assert native(ssim(a, b)) and not native(ssim(a, b, padding="valid"))
    with pytest.raises(ValueError, match="native kernel"):
        ssim(a, b, padding="valid", impl="native")


def test_photometric_loss_and_gradient():
    g = torch.Generator().manual_seed(1)
    t = torch.rand(1, 20, 24, 3, generator=g)
    r = t.clone().requires_grad_()
    loss, l1, s = photometric_loss(r, t)
    assert float(loss.detach()) < 1e-6 and float(l1.detach()) == 0.0
    r2 = torch.rand(1, 20, 24, 3, generator=g).requires_grad_()
    loss, l1, s = photometric_loss(r2, t, ssim_lambda=0.2)
    loss_v, l1_v, s_v = (float(t.detach()) for t in (loss, l1, s))
    assert abs(loss_v - (0.8 * l1_v + 0.2 * (1 - s_v))) < 1e-6
    loss.backward()
    assert torch.isfinite(r2.grad).all() and r2.grad.abs().sum() > 0


def test_psnr():
    a = torch.zeros(4, 4, 3)
    assert abs(psnr(a + 0.1, a) - 20.0) < 1e-4
    assert psnr(a, a) == float("inf")


def test_lpips_network_without_weights():
    model, reason = load_lpips(None) if "GSPLAT_KIT_LPIPS_WEIGHTS" not in os.environ else (None, "skip")
    if reason != "skip":
        assert model is None and "no weights on disk" in reason
    net = LPIPS()                 # random weights: still a distance
    x = torch.rand(1, 3, 64, 64)
    assert float(net(x, x)) == 0.0
    torch.nn.init.uniform_(net.lins[0].weight, 0.1, 1.0)
    assert float(net(x, torch.rand(1, 3, 64, 64))) > 0.0


def test_schedules():
    assert exponential_lr(0, 1.0, 0.01, 100) == 1.0
    assert abs(exponential_lr(50, 1.0, 0.01, 100) - 0.1) < 1e-12
    assert abs(exponential_lr(100, 1.0, 0.01, 100) - 0.01) < 1e-12
    assert [sh_degree_at(s, 3, 1000) for s in (0, 999, 1000, 2500, 3000, 9000)] == [0, 0, 1, 2, 3, 3]


def test_init_from_points():
    pts = np.array([[0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 3], [10, 10, 10]], dtype=np.float32)
    rgb = np.random.default_rng(0).random((5, 3)).astype(np.float32)
    s = init_splats(pts, rgb, sh_degree=3, init_opacity=0.1)
    # point 0: neighbours at 1, 2, 3 -> sqrt(mean(1, 4, 9))
    assert torch.allclose(torch.exp(s["scales"][0]), torch.full((3,), math.sqrt(14 / 3)), atol=1e-5)
    assert torch.equal(s["quats"], torch.tensor([[1.0, 0, 0, 0]]).repeat(5, 1))
    assert torch.allclose(torch.sigmoid(s["opacities"]), torch.full((5,), 0.1))
    assert torch.allclose(sh_to_rgb(s["sh0"][:, 0]), torch.from_numpy(rgb), atol=1e-6)
    assert s["shN"].shape == (5, 15, 3) and float(s["shN"].detach().abs().sum()) == 0
    assert torch.allclose(rgb_to_sh(torch.tensor(0.5)), torch.tensor(0.0))
    with pytest.raises(ValueError, match="non-empty"):
        init_splats(np.zeros((0, 3)), np.zeros((0, 3)))


def test_checkpoint_atomic_and_listing(tmp_path):
    out = str(tmp_path)
    for step in (10, 200, 30):
        ckpt.atomic_torch_save({"splats": {"x": torch.tensor([step])}}, ckpt.checkpoint_path(out, step))
    assert [os.path.basename(p) for p in ckpt.list_checkpoints(out)] == ["ckpt_000010.pt", "ckpt_000030.pt", "ckpt_000200.pt"]
    assert ckpt.latest_checkpoint(out).endswith("ckpt_000200.pt")
    ckpt.prune_checkpoints(out, keep=1)
    assert len(ckpt.list_checkpoints(out)) == 1
    assert not [f for f in os.listdir(os.path.join(out, "ckpts")) if f.startswith(".tmp_")]
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        ckpt.load_checkpoint(str(bad))
    with pytest.raises(FileNotFoundError):
        ckpt.load_checkpoint(str(tmp_path / "missing.pt"))


def test_lpips_without_torchvision_is_one_clear_error(monkeypatch):
    """torchvision is not a declared dependency (it must match the user's torch): LPIPS says what to install."""
    import sys

    from gsplat_kit.common.errors import UserError
    from gsplat_kit.train.metrics import LPIPS

    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision -> ModuleNotFoundError
    with pytest.raises(UserError, match="LPIPS needs torchvision"):
        LPIPS()
