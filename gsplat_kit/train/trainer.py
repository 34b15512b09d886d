"""The 3DGS training loop: sample a view, render, L1 + D-SSIM, backward, Adam, let the strategy
densify. Everything that changes the number of Gaussians lives in the strategy object."""
from __future__ import annotations

import math
import os
import sys

import torch

from gsplat_kit.common.errors import UserError
from gsplat_kit.common.run_folder import RunFolder
from gsplat_kit.train import checkpoint as ckpt
from gsplat_kit.train import export
from gsplat_kit.train.config import TrainConfig
from gsplat_kit.train.init import init_splats
from gsplat_kit.train.loop import TrainerBase, TrainingDiverged, peak_memory_mb, seed_everything
from gsplat_kit.train.rendering import render, resolve_device
from gsplat_kit.train.schedules import sh_degree_at
from gsplat_kit.train.strategy import make_strategy


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


class Trainer(TrainerBase):
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
        self._use_threads()
        resume = cfg.resume
        if resume == "auto":
            resume = ckpt.latest_checkpoint(cfg.out) if cfg.out else None
            if resume is None:
                print(f"resume: no checkpoint under {os.path.join(cfg.out, ckpt.CKPT_DIR)}; starting from step 0",
                      file=sys.stderr)
        saved = ckpt.load_checkpoint(resume) if resume else None    # a bad checkpoint is refused before the data is read
        self._use_scene(scene)
        self.strategy = make_strategy(cfg.strategy, **cfg.strategy_options)
        self.sampler = ViewSampler(len(self.scene.train_views), cfg.seed)
        self.step = 0
        self.elapsed = 0.0
        self.last_ckpt: str | None = None
        seed_everything(cfg.seed)
        if saved is not None:
            self._restore(resume, saved)
        else:
            self._start_from(init_splats(self.scene.points, self.scene.points_rgb, cfg.sh_degree, cfg.init_opacity,
                                         cfg.init_scale, self.device))
        self.strategy.check_sanity(self.splats, self.optimizers)

    @property
    def num_gaussians(self) -> int:
        return int(self.splats["means"].shape[0])

    # --- setup ---------------------------------------------------------------------------------------
    def _restore(self, path: str, ck: dict):
        """Continues from checkpoint `ck` (as `ckpt.load_checkpoint(path)` returned it)."""
        self._check_strategy(ck, path)
        n = int(ck["splats"]["means"].shape[0])
        self.strategy.check_state(ck["strategy_state"], n, path)
        self._restore_params(ck, path)
        self.sampler.load_state_dict(ck["sampler"], path)
        ckpt.set_rng_state(ck["rng"], path)

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
        mode = "antialiased" if cfg.antialiased else "classic"
        absgrad = bool(getattr(self.strategy, "absgrad", False))
        reg = getattr(self.strategy, "regularization", None)

        def one_step(step: int):
            idx = self.sampler.next()
            view = scene.train_views[idx]
            gt = self._image(idx)[None]
            bg = self.sampler.random_color() if cfg.random_background else self.background
            rgb, alpha, info = render(self.splats, torch.as_tensor(view.viewmat), torch.as_tensor(view.K),
                                      view.width, view.height, sh_degree_at(step, cfg.sh_degree, cfg.sh_degree_interval),
                                      bg, cfg.near_plane, cfg.far_plane, mode, absgrad)
            self.strategy.step_pre_backward(self.splats, self.optimizers, self.strategy_state, step, info)
            loss = self._view_loss(rgb, gt, view)
            if reg is not None:
                loss = loss + reg(self.splats)
            loss_v = float(loss.detach())
            self._backward_and_step(loss, loss_v, step, info, where=f" (view {view.name})")
            if viewer is not None:
                viewer.update(step=step + 1, loss=loss_v, num_gaussians=self.num_gaussians)
            return loss_v, lambda: -10 * math.log10(max(float(((rgb.detach().clamp(0, 1) - gt) ** 2).mean()), 1e-10))

        self._run_steps(until, one_step, cfg.progress, wait=None if viewer is None else viewer.wait_if_paused)

    def _periodic_checkpoint(self):
        self.save_checkpoint()
        ckpt.prune_checkpoints(self.out, self.cfg.keep_ckpts)

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
        self._write_config(start_step, cpu_threads=torch.get_num_threads() if self.device.type == "cpu" else None)
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
        return self._write_metrics(self._eval_splats(), start_step,
                                   peak_memory_mb=round(peak_memory_mb(self.device), 1))

    def _eval_splats(self) -> dict:
        return {k: v.detach() for k, v in self.splats.items()}
