"""What every training loop here shares, written once: `Trainer` (one process) and `DistributedTrainer`
(the Gaussians sharded over torch.distributed ranks) both derive from `TrainerBase`.

It owns the scene checks, the per-attribute Adams and their restoring from a checkpoint, the image cache,
the per-view loss, one optimisation step (what "diverged" means, backward, the position learning-rate
schedule, Adam, densification), the loop's bookkeeping (progress bar, training time, periodic
checkpoints) and the final report (config.json, evaluation, metrics.json). A subclass owns how it
samples and renders, what a checkpoint is, and `learning_rates`, `save_checkpoint`, `num_gaussians`.
"""
from __future__ import annotations

import math
import os
import random
import resource
import time

import numpy as np
import torch
from tqdm import tqdm

from gsplat_kit.common.atomic import write_json
from gsplat_kit.common.errors import UserError
from gsplat_kit.scene import load_scene
from gsplat_kit.train.evaluation import evaluate, load_image_tensor
from gsplat_kit.train.losses import photometric_loss
from gsplat_kit.train.rendering import cpu_threads
from gsplat_kit.train.schedules import exponential_lr, sh_degree_at


class TrainingDiverged(UserError, RuntimeError):
    """The loss (or a parameter) stopped being finite: the learning rates or the data are at fault, so it is
    reported like bad input (one line naming the step and the last good checkpoint)."""


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux: KiB; whole process


class TrainerBase:
    """The shared half of a trainer. Attributes a subclass sets before using it: cfg (a validated
    TrainConfig), device, out, strategy (the Strategy hooks), step, elapsed, last_ckpt."""

    # --- setup ---------------------------------------------------------------------------------------
    def _use_threads(self):
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_threads(self.cfg.num_threads))

    def _use_scene(self, scene=None):
        """The training scene (loaded from cfg.data unless given), its scale and fixed background."""
        cfg = self.cfg
        if scene is None:
            scene = load_scene(cfg.data, data_factor=cfg.data_factor, test_every=cfg.test_every,
                               white_background=cfg.white_background)
        if not scene.train_views:
            raise UserError(f"{cfg.data}: no training views")
        self.scene = scene
        self.scene_scale = float(scene.scene_scale)
        self.background = None if scene.background is None else torch.as_tensor(scene.background, dtype=torch.float32)
        if cfg.random_background and self.background is not None:
            # the ground truth is already composited on the scene's background; a random one would not match
            raise UserError(f"{cfg.data}: random_background conflicts with the scene's fixed background "
                            f"{self.background.tolist()} (drop --random-background or --white-background)")
        self._images: dict[int, torch.Tensor] = {}

    def base_learning_rates(self) -> dict:
        """3DGS's per-attribute rates; the means' is relative to the scene's extent."""
        c = self.cfg
        return {"means": c.means_lr * self.scene_scale, "scales": c.scales_lr, "quats": c.quats_lr,
                "opacities": c.opacities_lr, "sh0": c.sh0_lr, "shN": c.shN_lr}

    def learning_rates(self) -> dict:
        return self.base_learning_rates()

    def adam_options(self) -> dict:
        return {"eps": 1e-15}   # as 3DGS and gsplat

    def _make_optimizers(self) -> dict:
        # one Adam per attribute (3DGS's per-parameter rates)
        return {k: torch.optim.Adam([{"params": [self.splats[k]], "lr": lr, "name": k}], **self.adam_options())
                for k, lr in self.learning_rates().items()}

    def _start_from(self, splats: dict):
        """Fresh optimizers and strategy statistics for the initial Gaussians `splats` (Parameters)."""
        self.splats = splats
        self.optimizers = self._make_optimizers()
        self.strategy_state = self.strategy.initialize_state(scene_scale=self.scene_scale)

    def _check_strategy(self, ck: dict, where):
        if ck["config"].get("strategy") != self.cfg.strategy:
            raise UserError(f"{where}: trained with strategy {ck['config'].get('strategy')!r}, not {self.cfg.strategy!r}")

    def _restore_params(self, ck: dict, where):
        """The Gaussians, Adam moments, strategy statistics, step and training time of checkpoint `ck` (read
        from `where`), on this device."""
        self.splats = {k: torch.nn.Parameter(v.to(self.device)) for k, v in ck["splats"].items()}
        self.optimizers = self._make_optimizers()
        for k, o in self.optimizers.items():
            # the moments come from the checkpoint, the hyper-parameters from this config (the means' rate
            # is set before every step), so a checkpoint cannot smuggle in a learning rate of "abc"
            o.load_state_dict({"state": ck["optimizers"][k]["state"], "param_groups": o.state_dict()["param_groups"]})
        self.strategy_state = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v)
                               for k, v in ck["strategy_state"].items()}
        self.step, self.elapsed, self.last_ckpt = int(ck["step"]), float(ck.get("elapsed", 0.0)), str(where)

    # --- one step ------------------------------------------------------------------------------------
    def _image(self, i: int) -> torch.Tensor:
        # cached as uint8 on the training device: 4x less memory than float
        if i not in self._images:
            img = load_image_tensor(self.scene.train_views[i])
            self._images[i] = (img * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).to(self.device)
        return self._images[i].float() / 255.0

    def _view_loss(self, rgb: torch.Tensor, gt: torch.Tensor, view) -> torch.Tensor:
        """L1 + D-SSIM of one view's render [1, H, W, 3] against its image."""
        mask = view.load_mask() if getattr(view, "mask_path", None) else None
        if mask is not None:  # masked-out pixels (0) are zero on both sides: no loss, no gradient
            m = mask.to(self.device)[None, ..., None]
            rgb, gt = rgb * m, gt * m
        return photometric_loss(rgb, gt, self.cfg.ssim_lambda)[0]

    def _backward_and_step(self, loss: torch.Tensor, loss_v: float, step: int, info: dict, where: str = ""):
        """Ends step `step` after its forward pass and the strategy's pre-backward hook. A loss that is not
        finite (`loss_v`: the whole batch's, summed over the ranks) raises TrainingDiverged before anything is
        stepped (`where` names what was rendered); otherwise backward, this step's position rate (3DGS's
        exponential decay), Adam on every attribute, its gradients dropped (set_to_none), and then the
        strategy densifies the stepped Gaussians."""
        cfg = self.cfg
        if not math.isfinite(loss_v):
            raise TrainingDiverged(
                f"loss became {loss_v} at step {step}{where}; the last good checkpoint is "
                f"{self.last_ckpt or 'none (no checkpoint was written yet)'}: lower the learning rates or "
                f"resume from it")
        loss.backward()
        lr0 = self.learning_rates()["means"]
        means_lr = exponential_lr(step, lr0, lr0 * cfg.means_lr_final_factor, cfg.steps)
        for g in self.optimizers["means"].param_groups:
            g["lr"] = means_lr
        for o in self.optimizers.values():
            o.step()
            o.zero_grad(set_to_none=True)
        # after the optimizer step, as gsplat orders it; MCMC scales its position noise by this step's rate
        self.strategy.step_post_backward(self.splats, self.optimizers, self.strategy_state, step, info,
                                         lr=means_lr)

    # --- the loop ------------------------------------------------------------------------------------
    def _run_steps(self, until: int | None, one_step, show_progress: bool, wait=None):
        """Calls one_step(step) for steps self.step .. until-1 (default cfg.steps). one_step returns the
        step's loss and None or a function giving its render's PSNR (called only when the bar shows it).
        Time spent in wait() (a paused viewer) is not training time."""
        cfg = self.cfg
        until = cfg.steps if until is None else until
        bar = tqdm(total=until, initial=self.step, desc="train", disable=not show_progress, dynamic_ncols=True)
        t0 = time.perf_counter()
        try:
            while self.step < until:
                if wait is not None:
                    tp = time.perf_counter()
                    wait()
                    t0 += time.perf_counter() - tp
                loss_v, psnr = one_step(self.step)
                self.step += 1
                if self.step % 10 == 0 or self.step == until:
                    shown = {"loss": f"{loss_v:.4f}"} if psnr is None else \
                        {"loss": f"{loss_v:.4f}", "psnr": f"{psnr():.2f}"}
                    bar.set_postfix(**shown, n=self.num_gaussians, refresh=False)
                bar.update(1)
                if cfg.ckpt_every and self.out and self.step % cfg.ckpt_every == 0 and self.step < cfg.steps:
                    self.elapsed += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    self._periodic_checkpoint()
        finally:
            self.elapsed += time.perf_counter() - t0
            bar.close()

    def _periodic_checkpoint(self):
        self.save_checkpoint()

    # --- the report ----------------------------------------------------------------------------------
    def _write_config(self, start_step: int, **resolved):
        """OUT/config.json: the config as given (reusable with --config: without this run's resume, which would
        make a new run that reuses it refuse its fresh folder) plus what it resolved to on this machine and
        scene (`resolved` adds the subclass's own)."""
        scene = self.scene
        write_json(os.path.join(self.out, "config.json"), {**self.cfg.to_dict(), "resume": None, "resolved": {
            "device": str(self.device), "scene_scale": self.scene_scale, "strategy": self.strategy.to_dict(),
            "learning_rates": self.learning_rates(), "num_train_views": len(scene.train_views),
            "num_test_views": len(scene.test_views), "num_init_points": int(len(scene.points)),
            "resumed_from": self.last_ckpt, "resumed_at_step": start_step, **resolved}})

    def _write_metrics(self, splats: dict, start_step: int, **extra) -> dict:
        """OUT/metrics.json, returned: the run's size and times, `extra`, and with cfg.eval the scores of
        `splats` (detached, all Gaussians) on the held-out views, their renders in OUT/eval."""
        cfg = self.cfg
        metrics = {"num_gaussians": int(len(splats["means"])), "steps": self.step,
                   "train_time_s": round(self.elapsed, 3),
                   "steps_per_s": round(self.step / self.elapsed, 3) if self.elapsed > 0 else None,
                   "steps_this_run": self.step - start_step, "device": str(self.device), "strategy": cfg.strategy,
                   **extra}
        if cfg.eval:
            views, note = self.scene.test_views, None
            if not views:
                views, note = self.scene.train_views, "no held-out views (test_every=0): scored on the training views"
            t = time.perf_counter()
            ev = evaluate(splats, views, os.path.join(self.out, "eval"), self.background, cfg.lpips_weights,
                          sh_degree_at(max(self.step - 1, 0), cfg.sh_degree, cfg.sh_degree_interval), cfg.progress)
            metrics = {**{k: ev[k] for k in ("psnr", "ssim", "lpips", "lpips_note")}, **metrics,
                       "num_test_views": ev["num_views"], "eval_time_s": round(time.perf_counter() - t, 3),
                       "per_image": ev["per_image"]}
            if note:
                metrics["note"] = note
        write_json(os.path.join(self.out, "metrics.json"), metrics)
        return metrics
