"""Image priors and augmentations shared by DeepInversion and NaturalInversion (both papers' forms)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def tv_l2(x: torch.Tensor) -> torch.Tensor:
    """Total variation as both reference codes compute it: the sum of the L2 norms of the horizontal,
    vertical and two diagonal neighbour differences over the whole batch."""
    d1 = x[..., :, :-1] - x[..., :, 1:]
    d2 = x[..., :-1, :] - x[..., 1:, :]
    d3 = x[..., 1:, :-1] - x[..., :-1, 1:]
    d4 = x[..., :-1, :-1] - x[..., 1:, 1:]
    return sum(torch.linalg.vector_norm(d) for d in (d1, d2, d3, d4))


def tv_l1(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic L1 total variation (mean absolute neighbour difference), DeepInversion's R_TV option."""
    return (x[..., :, :-1] - x[..., :, 1:]).abs().mean() + (x[..., :-1, :] - x[..., 1:, :]).abs().mean()


def l2_prior(x: torch.Tensor) -> torch.Tensor:
    """||x||_2 over the whole batch (R_l2)."""
    return torch.linalg.vector_norm(x)


def jitter_flip(x: torch.Tensor, gen: torch.Generator, jitter: int = 2, flip: bool = True) -> torch.Tensor:
    """Random circular shift by up to ``jitter`` pixels in each axis and (optionally) a horizontal flip,
    one draw per call for the whole batch (as the references do); draws come from ``gen`` so a batch
    seeded the same way replays exactly."""
    if jitter:
        dx, dy = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=gen))
        x = torch.roll(x, shifts=(dx, dy), dims=(2, 3))
    if flip and bool(torch.rand((), generator=gen) < 0.5):
        x = torch.flip(x, dims=(3,))
    return x


def competition_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor, T: float = 3.0) -> torch.Tensor:
    """Adaptive DeepInversion's competition term: 1 - JS(teacher || student) on temperature-T
    probabilities (clamped to [0.01, 0.99] as in the reference), so minimising it seeks images on which
    the student disagrees with the teacher."""
    p = F.softmax(student_logits / T, dim=1)
    q = F.softmax(teacher_logits / T, dim=1)
    m = (0.5 * (p + q)).clamp(0.01, 0.99)
    p, q = p.clamp(0.01, 0.99), q.clamp(0.01, 0.99)
    # KL(m || p) written as kl_div(log p, m), batch mean, as in the reference
    js = 0.5 * F.kl_div(p.log(), m, reduction="batchmean") + 0.5 * F.kl_div(q.log(), m, reduction="batchmean")
    return 1.0 - js.clamp(0.0, 1.0)
