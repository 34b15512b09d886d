"""BN-statistics prior, image priors, and gradient flow of both inversion methods (no teacher needed)."""
import pytest
import torch
import torch.nn as nn

from gsplat_kit.synth.bn_hooks import BNStatsLoss, NoBatchNormError, batchnorm_layers
from gsplat_kit.synth.models import build_model
from gsplat_kit.synth.naturalinversion import (FeatureTransferPyramid, Generator, NaturalInversionBatch,
                                               NaturalInversionConfig, stage_maps)
from gsplat_kit.synth.priors import competition_loss, jitter_flip, l2_prior, tv_l1, tv_l2


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


def set_running_stats_to_batch(model, x):
    """Make every BN's running statistics equal to the (biased) statistics of its input for batch x.
    Layer l's input depends on the layers before it, so repeat once per layer (in eval mode)."""
    layers = batchnorm_layers(model)
    for _ in layers:
        seen = {}
        hs = [m.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, i[0].detach()))
              for k, m in enumerate(layers)]
        with torch.no_grad():
            model(x)
        for h in hs:
            h.remove()
        for k, m in enumerate(layers):
            m.running_mean.copy_(seen[k].mean((0, 2, 3)))
            m.running_var.copy_(seen[k].var((0, 2, 3), unbiased=False))


def test_bn_loss_zero_when_batch_matches_running_stats_and_positive_otherwise():
    model = small_cnn()
    x = torch.randn(6, 3, 12, 12) * 2 + 0.5
    set_running_stats_to_batch(model, x)
    with BNStatsLoss(model) as bn:
        model(x)
        assert len(bn.per_layer()) == 2
        assert bn.loss().item() == pytest.approx(0.0, abs=1e-5)
        model(x * 1.5 + 0.2)               # a different batch: its statistics differ
        assert bn.loss().item() > 0.1
    # hooks are removed on exit
    assert all(not m._forward_hooks for m in batchnorm_layers(model))


def test_bn_loss_matches_formula_and_first_bn_multiplier():
    model = small_cnn()
    bn1 = model[1]
    bn1.running_mean.uniform_(-1, 1)
    bn1.running_var.uniform_(0.5, 2)
    x = torch.randn(4, 3, 10, 10)
    with BNStatsLoss(model) as plain, BNStatsLoss(model, first_bn_multiplier=10.0) as weighted:
        model(x)
        h = model[0](x)
        want0 = (torch.linalg.vector_norm(bn1.running_mean - h.mean((0, 2, 3)))
                 + torch.linalg.vector_norm(bn1.running_var - h.var((0, 2, 3), unbiased=False)))
        t = plain.per_layer()
        assert t[0].item() == pytest.approx(want0.item(), rel=1e-5)
        assert weighted.loss().item() == pytest.approx(plain.loss().item() + 9 * t[0].item(), rel=1e-5)


def test_bn_loss_gradient_reaches_the_images():
    model = build_model("resnet20").eval().requires_grad_(False)
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    with BNStatsLoss(model) as bn:
        model(x)
        assert len(bn.per_layer()) == len(batchnorm_layers(model)) == 21  # stem + 18 in blocks + 2 shortcuts
        bn.loss().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    assert all(p.grad is None for p in model.parameters())


def test_no_batchnorm_teacher_is_a_clear_error():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    with pytest.raises(NoBatchNormError, match="Sequential has no BatchNorm"):
        BNStatsLoss(net)
    from gsplat_kit.synth import deepinversion, naturalinversion

    for mod in (deepinversion, naturalinversion):
        with pytest.raises(ValueError, match="BatchNorm"):
            mod.invert_batch(net, torch.arange(4), None, seed=0)
    assert all(p.requires_grad for p in net.parameters())   # the teacher is left as it was


def test_image_priors():
    flat = torch.full((2, 3, 8, 8), 0.3)
    assert tv_l2(flat).item() == 0 and tv_l1(flat).item() == 0
    noisy = flat + 0.1 * torch.randn_like(flat)
    assert tv_l2(noisy).item() > 0.5 and tv_l1(noisy).item() > 0.05
    assert l2_prior(flat).item() == pytest.approx(0.3 * (2 * 3 * 64) ** 0.5, rel=1e-5)
    # jitter/flip: a permutation of pixels, replayed exactly by the same generator seed
    x = torch.randn(2, 3, 8, 8)
    a = jitter_flip(x, torch.Generator().manual_seed(5), 2, True)
    b = jitter_flip(x, torch.Generator().manual_seed(5), 2, True)
    assert torch.equal(a, b) and torch.equal(a.flatten().sort()[0], x.flatten().sort()[0])
    assert torch.equal(jitter_flip(x, torch.Generator(), 0, False), x)


def test_competition_loss_rewards_disagreement():
    t = torch.randn(8, 10) * 3
    same = competition_loss(t, t.clone())
    assert same.item() == pytest.approx(1.0, abs=1e-6)           # JS = 0: no reward
    other = competition_loss(t, -t)
    assert other.item() < same.item() - 0.05


def test_natural_inversion_gradients_reach_generator_pyramid_and_acs():
    teacher = build_model("resnet20").eval().requires_grad_(False)
    cfg = NaturalInversionConfig(gen_channels=16, latent_dim=32)
    y = torch.arange(4)
    torch.manual_seed(0)
    net = NaturalInversionBatch(teacher, y, cfg, 10)
    maps = stage_maps(teacher, torch.rand(2, 3, 32, 32))
    assert [m.shape[1:] for m in maps] == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    x = net(torch.Generator().manual_seed(0))
    assert x.shape == (4, 3, 32, 32)
    with BNStatsLoss(teacher) as bn:
        logits = teacher(x * net.std + net.mean)
        (nn.functional.cross_entropy(logits, y) + bn.loss()).backward()
    grads = {"generator": net.generator.fc.weight.grad, "generator_last_conv": net.generator.body[-1].weight.grad,
             "ftp_to_rgb": net.ftp.to_rgb.lin.weight.grad, "ftp_fuse": net.ftp.fuse[0].weight.grad,
             "ftp_proj": net.ftp.proj[-1].lin.weight.grad, "acs": net.alpha.grad}
    for name, g in grads.items():
        assert g is not None and g.abs().sum() > 0 and torch.isfinite(g).all(), name
    assert all(p.grad is None for p in teacher.parameters())


def test_generator_and_pyramid_shapes():
    g = Generator(latent_dim=8, num_classes=3, image_size=16, channels=8)
    out = g(torch.randn(5, 8), torch.tensor([0, 1, 2, 0, 1]))
    assert out.shape == (5, 3, 16, 16)
    ftp = FeatureTransferPyramid([4, 6, 8])
    maps = [torch.randn(5, 4, 16, 16), torch.randn(5, 6, 8, 8), torch.randn(5, 8, 4, 4)]
    y = ftp(out, maps)
    assert y.shape == out.shape and y.abs().max() <= 1          # tanh output
    with pytest.raises(ValueError, match="multiple of 4"):
        Generator(8, 3, image_size=30)


def test_deep_inversion_gradient_flow_one_step():
    """One DeepInversion step changes the images (gradient reached them) and keeps them finite."""
    from gsplat_kit.synth.deepinversion import DeepInversionConfig, invert_batch

    teacher = build_model("resnet20").eval()
    cfg = DeepInversionConfig(iterations=2)
    a, log = invert_batch(teacher, torch.arange(3), cfg, seed=1)
    b, _ = invert_batch(teacher, torch.arange(3), DeepInversionConfig(iterations=1), seed=1)
    assert a.shape == (3, 3, 32, 32) and torch.isfinite(a).all()
    assert 0 <= a.min() and a.max() <= 1
    assert len(log["loss"]) == 2 and log["loss"][1] != log["loss"][0]


def test_bad_targets_and_sizes():
    from gsplat_kit.synth.deepinversion import DeepInversionConfig, invert_batch

    teacher = build_model("resnet20").eval()
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 9\]"):
        invert_batch(teacher, torch.tensor([0, 12]), DeepInversionConfig(iterations=1))
    with pytest.raises(ValueError, match="1-D integer"):
        invert_batch(teacher, torch.zeros(2, 2, dtype=torch.long), DeepInversionConfig(iterations=1))
    with pytest.raises(ValueError, match="image_size"):
        invert_batch(teacher, torch.arange(2), DeepInversionConfig(iterations=1, image_size=4))
