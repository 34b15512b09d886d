"""Learning-rate and SH-degree schedules, as pure functions of the step (so resuming needs no state)."""
from __future__ import annotations


def exponential_lr(step: int, lr_init: float, lr_final: float, max_steps: int) -> float:
    """Log-linear decay from lr_init (step 0) to lr_final (max_steps), as 3DGS's position learning rate."""
    t = min(max(step / max(max_steps, 1), 0.0), 1.0)
    return lr_init * (lr_final / lr_init) ** t


def sh_degree_at(step: int, max_degree: int, interval: int) -> int:
    """One more SH band every `interval` steps, up to `max_degree` (3DGS's coarse-to-fine colour)."""
    return min(step // max(interval, 1), max_degree)
