"""The 3DGS training loop: sample a view, render, L1 + D-SSIM, backward, Adam, let the strategy
densify. Everything that changes the number of Gaussians lives in the strategy object."""
from __future__ import annotations

import math
import os
import random
import resource
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from gsplat_kit.common.atomic import write_json
from gsplat_kit.common.errors import UserError
from gsplat_kit.common.run_folder import RunFolder
from gsplat_kit.scene import load_scene
from gsplat_kit.train import checkpoint as ckpt
from gsplat_kit.train import export
from gsplat_kit.train.config import TrainConfig
from gsplat_kit.train.evaluation import evaluate, load_image_tensor
from gsplat_kit.train.init import init_splats
from gsplat_kit.train.losses import photometric_loss
from gsplat_kit.train.rendering import cpu_threads, render, resolve_device
from gsplat_kit.train.schedules import exponential_lr, sh_degree_at
from gsplat_kit.train.strategy import make_strategy


class TrainingDiverged(UserError, RuntimeError):
    """The loss (or a parameter) stopped being finite: the learning rates or the data are at fault, so it is
    reported like bad input (one line naming the step and the last good checkpoint)."""


class ViewSampler:
    """Shuffled passes over the training views, from its own seeded generator (saved in checkpoints)."""

    def __init__(self, n: int, seed: int):
        self.n = n
        self.gen = torch.Generator().manual_seed(seed)
        self.perm: list[int] = []
        self.pos = 0

    def next(self) -> int:
        if self.pos >= len(self.perm):
            self.perm = torch.randperm(self.n, generator=self.gen).tolist()
            self.pos = 0
        self.pos += 1
        return self.perm[self.pos - 1]

    def random_color(self) -> torch.Tensor:
        return torch.rand(3, generator=self.gen)

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "perm": list(self.perm), "pos": self.pos, "n": self.n}

    def load_state_dict(self, s: dict, where: str = "checkpoint"):
        if s["n"] != self.n:
            raise UserError(f"{where}: trained on {s['n']} views, this scene has {self.n}")
        self.gen.set_state(s["gen"])
        self.perm, self.pos = list(s["perm"]), s["pos"]


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux: KiB; whole process


class Trainer:
    """`Trainer(cfg).train()` runs the whole job: fit, checkpoint, export the .ply, evaluate.

    `scene` may be given directly (any object with the gsplat_kit.scene.Scene attributes), otherwise it is
    loaded from cfg.data. `run` is cfg.out already claimed (`RunFolder.claim`); without it `train()` claims
    the folder itself (a new run, or the same run when resuming in place).
    """

    def __init__(self, cfg: TrainConfig, scene=None, run: RunFolder | None = None):
        self.cfg = cfg.validate()
        self.run = run
        self.out = str(run.path) if run is not None else cfg.out   # where outputs go (a staging folder on --overwrite)
        self.device = resolve_device(cfg.device)
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_threads(cfg.num_threads))
        resume = cfg.resume
        if resume == "auto":
            resume = ckpt.latest_checkpoint(cfg.out) if cfg.out else None
            if resume is None:
                print(f"resume: no checkpoint under {os.path.join(cfg.out, ckpt.CKPT_DIR)}; starting from step 0",
                      file=sys.stderr)
        saved = ckpt.load_checkpoint(resume) if resume else None    # a bad checkpoint is refused before the data is read
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
        self.strategy = make_strategy(cfg.strategy, **cfg.strategy_options)
        self.sampler = ViewSampler(len(scene.train_views), cfg.seed)
        self._images: dict[int, torch.Tensor] = {}
        self.step = 0
        self.elapsed = 0.0
        self.last_ckpt: str | None = None
        seed_everything(cfg.seed)
        if saved is not None:
            self._restore(resume, saved)
        else:
            self.splats = init_splats(scene.points, scene.points_rgb, cfg.sh_degree, cfg.init_opacity, cfg.init_scale,
                                      self.device)
            self.optimizers = self._make_optimizers()
            self.strategy_state = self.strategy.initialize_state(scene_scale=self.scene_scale)
        self.strategy.check_sanity(self.splats, self.optimizers)

    # --- setup ---------------------------------------------------------------------------------------
    def _lrs(self) -> dict:
        c = self.cfg
        return {"means": c.means_lr * self.scene_scale, "scales": c.scales_lr, "quats": c.quats_lr,
                "opacities": c.opacities_lr, "sh0": c.sh0_lr, "shN": c.shN_lr}

    def _make_optimizers(self) -> dict:
        # one Adam per attribute (3DGS's per-parameter rates); eps 1e-15 as in 3DGS/gsplat
        return {k: torch.optim.Adam([{"params": [self.splats[k]], "lr": lr, "name": k}], eps=1e-15)
                for k, lr in self._lrs().items()}

    def _restore(self, path: str, ck: dict):
        """Continues from checkpoint `ck` (as `ckpt.load_checkpoint(path)` returned it)."""
        if ck["config"].get("strategy") != self.cfg.strategy:
            raise UserError(f"{path}: trained with strategy {ck['config'].get('strategy')!r}, not {self.cfg.strategy!r}")
        n = int(ck["splats"]["means"].shape[0])
        self.strategy.check_state(ck["strategy_state"], n, path)
        self.splats = {k: torch.nn.Parameter(v.to(self.device)) for k, v in ck["splats"].items()}
        self.optimizers = self._make_optimizers()
        for k, o in self.optimizers.items():
            # the moments come from the checkpoint, the hyper-parameters from this config (the means' rate
            # is set before every step), so a checkpoint cannot smuggle in a learning rate of "abc"
            o.load_state_dict({"state": ck["optimizers"][k]["state"], "param_groups": o.state_dict()["param_groups"]})
        self.strategy_state = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v)
                               for k, v in ck["strategy_state"].items()}
        self.sampler.load_state_dict(ck["sampler"], path)
        ckpt.set_rng_state(ck["rng"], path)
        self.step = int(ck["step"])
        self.elapsed = float(ck.get("elapsed", 0.0))
        self.last_ckpt = path

    def _image(self, i: int) -> torch.Tensor:
        # cached as uint8 on the training device: 4x less memory than float
        if i not in self._images:
            img = load_image_tensor(self.scene.train_views[i])
            self._images[i] = (img * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).to(self.device)
        return self._images[i].float() / 255.0

    # --- loop ----------------------------------------------------------------------------------------
    def save_checkpoint(self, path: str | None = None) -> str:
        path = path or ckpt.checkpoint_path(self.out, self.step)
        for k, v in self.splats.items():
            if not torch.isfinite(v).all():
                raise TrainingDiverged(f"parameter '{k}' is not finite at step {self.step}; not overwriting the last "
                                       f"good checkpoint ({self.last_ckpt or 'none written yet'})")
        ckpt.save_checkpoint(path, step=self.step, splats=self.splats, optimizers=self.optimizers,
                             strategy_state=self.strategy_state, sampler_state=self.sampler.state_dict(),
                             config=self.cfg.to_dict(), elapsed=self.elapsed)
        self.last_ckpt = path
        return path

    def train_steps(self, until: int | None = None, viewer=None):
        """Runs training steps self.step .. until-1 (default cfg.steps)."""
        cfg, scene = self.cfg, self.scene
        until = cfg.steps if until is None else until
        lr0 = cfg.means_lr * self.scene_scale
        mode = "antialiased" if cfg.antialiased else "classic"
        absgrad = bool(getattr(self.strategy, "absgrad", False))
        reg = getattr(self.strategy, "regularization", None)
        bar = tqdm(total=until, initial=self.step, desc="train", disable=not cfg.progress, dynamic_ncols=True)
        t0 = time.perf_counter()
        try:
            while self.step < until:
                step = self.step
                if viewer is not None:
                    tp = time.perf_counter()
                    viewer.wait_if_paused()
                    t0 += time.perf_counter() - tp   # paused time is not training time
                idx = self.sampler.next()
                view = scene.train_views[idx]
                gt = self._image(idx)[None]
                means_lr = exponential_lr(step, lr0, lr0 * cfg.means_lr_final_factor, cfg.steps)
                for g in self.optimizers["means"].param_groups:
                    g["lr"] = means_lr
                bg = self.sampler.random_color() if cfg.random_background else self.background
                rgb, alpha, info = render(self.splats, torch.as_tensor(view.viewmat), torch.as_tensor(view.K),
                                          view.width, view.height, sh_degree_at(step, cfg.sh_degree, cfg.sh_degree_interval),
                                          bg, cfg.near_plane, cfg.far_plane, mode, absgrad)
                self.strategy.step_pre_backward(self.splats, self.optimizers, self.strategy_state, step, info)
                pred, target = rgb, gt
                mask = view.load_mask() if getattr(view, "mask_path", None) else None
                if mask is not None:  # masked-out pixels (0) are zero on both sides: no loss, no gradient
                    m = mask.to(self.device)[None, ..., None]
                    pred, target = rgb * m, gt * m
                loss, l1, _ = photometric_loss(pred, target, cfg.ssim_lambda)
                if reg is not None:
                    loss = loss + reg(self.splats)
                loss_v = float(loss.detach())
                if not math.isfinite(loss_v):
                    raise TrainingDiverged(
                        f"loss became {loss_v} at step {step} (view {view.name}); the last good checkpoint is "
                        f"{self.last_ckpt or 'none (no checkpoint was written yet)'}: lower the learning rates or "
                        f"resume from it")
                loss.backward()
                for o in self.optimizers.values():
                    o.step()
                    o.zero_grad(set_to_none=True)
                self.strategy.step_post_backward(self.splats, self.optimizers, self.strategy_state, step, info,
                                                 lr=means_lr)
                self.step += 1
                n = int(self.splats["means"].shape[0])
                if viewer is not None:
                    viewer.update(step=self.step, loss=loss_v, num_gaussians=n)
                if self.step % 10 == 0 or self.step == until:
                    mse = float(((rgb.detach().clamp(0, 1) - gt) ** 2).mean())
                    bar.set_postfix(loss=f"{loss_v:.4f}", psnr=f"{-10 * math.log10(max(mse, 1e-10)):.2f}", n=n,
                                    refresh=False)
                bar.update(1)
                if cfg.ckpt_every and self.out and self.step % cfg.ckpt_every == 0 and self.step < cfg.steps:
                    self.elapsed += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    self.save_checkpoint()
                    ckpt.prune_checkpoints(self.out, cfg.keep_ckpts)
        finally:
            self.elapsed += time.perf_counter() - t0
            bar.close()

    def train(self) -> dict:
        """The whole job in its claimed output folder. Returns the metrics dict (also in OUT/metrics.json).

        A failure leaves what was written (checkpoints) for --resume; on --overwrite the previous run is
        replaced only when this one finishes."""
        cfg = self.cfg
        if not cfg.out:
            raise UserError("an output folder (--out) is required")
        if self.run is None:
            self.run = RunFolder.claim(cfg.out, "train", resume=cfg.resumes_in_place())
            self.out = str(self.run.path)
        try:
            metrics = self._fit_and_report()
        except BaseException:
            self.run.release()
            raise
        self.run.finish()
        if self.out != str(self.run.path):          # the staging folder of --overwrite moved into place
            self.out = str(self.run.path)
            self.last_ckpt = ckpt.checkpoint_path(self.out, self.step)
        return metrics

    def _fit_and_report(self) -> dict:
        cfg, out = self.cfg, self.out
        start_step = self.step
        # the config as given (reusable with --config: without this run's resume, which would make a new run
        # that reuses it refuse its fresh folder) plus what it resolved to on this machine and scene
        resolved = {**cfg.to_dict(), "resume": None, "resolved": {
            "device": str(self.device), "scene_scale": self.scene_scale, "strategy": self.strategy.to_dict(),
            "learning_rates": self._lrs(), "cpu_threads": torch.get_num_threads() if self.device.type == "cpu" else None,
            "num_train_views": len(self.scene.train_views),
            "num_test_views": len(self.scene.test_views), "num_init_points": int(len(self.scene.points)),
            "resumed_from": self.last_ckpt, "resumed_at_step": start_step}}
        write_json(os.path.join(out, "config.json"), resolved)
        viewer = None
        if cfg.viewer:
            from gsplat_kit.viewer.live import LiveViewer  # only with --viewer: the viewer pulls in viser

            viewer = LiveViewer(self.splats, views=self.scene.train_views, port=cfg.viewer_port)
        try:
            self.train_steps(viewer=viewer)
        finally:
            if viewer is not None:
                viewer.close()
        self.save_checkpoint(ckpt.checkpoint_path(out, self.step))
        export.write_ply(os.path.join(out, "point_cloud.ply"), self.splats)
        steps_run = self.step - start_step
        metrics = {"num_gaussians": int(self.splats["means"].shape[0]), "steps": self.step,
                   "train_time_s": round(self.elapsed, 3),
                   "steps_per_s": round(self.step / self.elapsed, 3) if self.elapsed > 0 else None,
                   "steps_this_run": steps_run, "peak_memory_mb": round(peak_memory_mb(self.device), 1),
                   "device": str(self.device), "strategy": cfg.strategy}
        if cfg.eval:
            views = self.scene.test_views
            note = None
            if not views:
                views, note = self.scene.train_views, "no held-out views (test_every=0): scored on the training views"
            t = time.perf_counter()
            ev = evaluate(self._eval_splats(), views, os.path.join(out, "eval"), self.background, cfg.lpips_weights,
                          sh_degree_at(max(self.step - 1, 0), cfg.sh_degree, cfg.sh_degree_interval), cfg.progress)
            metrics = {**{k: ev[k] for k in ("psnr", "ssim", "lpips", "lpips_note")}, **metrics,
                       "num_test_views": ev["num_views"], "eval_time_s": round(time.perf_counter() - t, 3),
                       "per_image": ev["per_image"]}
            if note:
                metrics["note"] = note
        write_json(os.path.join(out, "metrics.json"), metrics)
        return metrics

    def _eval_splats(self) -> dict:
        return {k: v.detach() for k, v in self.splats.items()}
