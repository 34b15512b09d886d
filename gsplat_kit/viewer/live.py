"""`LiveViewer`: the viewer following a training run (`gsplat-kit train --viewer`).

The trainer owns the splats and mutates them in place (and replaces them on densification). The viewer
only reads them inside `update()`, on the trainer's thread, where it copies a detached snapshot at a
throttled rate; a worker thread then hands the snapshot to the page (client splats, server renderer),
so training never waits for the upload, and nothing reads tensors the optimiser is writing.
"""
from __future__ import annotations

import threading
import time

import torch

from gsplat_kit.viewer.app import ViewerApp
from gsplat_kit.viewer.server import check_address

HOST = "127.0.0.1"  # the training viewer serves this machine only


class LiveViewer:
    """Web viewer for a training run, with pause/resume, step, loss and Gaussian count.

    LiveViewer(splats, views=None, host=HOST, port=8080, min_interval=1.0, **ViewerApp kwargs)
    """

    @staticmethod
    def check_port(port: int, host: str = HOST) -> None:
        """Raises a UserError now if the viewer could not listen there (before hours of set-up)."""
        check_address(host, port)

    def __init__(self, splats: dict, views=None, host: str = HOST, port: int = 8080,
                 min_interval: float = 1.0, **app_kwargs):
        self.splats = splats
        self.min_interval = float(min_interval)
        self.app = ViewerApp(host, port, title="gsplat_kit training", **app_kwargs)
        self.url = self.app.url
        self._resume = threading.Event()
        self._resume.set()
        self._last_push = 0.0
        self.snapshots = 0                    # snapshots taken (only while a page is open)
        self._queued = self._shown = 0
        self._pending: tuple | None = None
        self._cv = threading.Condition()
        self._closed = False
        gui = self.app.server.gui
        with gui.add_folder("Training", order=-1):
            self.gui_stats = gui.add_markdown("step – · loss – · – Gaussians")
            self.gui_pause = gui.add_button("Pause training")
        self.gui_pause.on_click(lambda _: self.resume() if self.paused else self.pause())
        self.app.set_scene(self._snapshot(), views, label="training (live)")
        self._worker = threading.Thread(target=self._publish_loop, name="viewer-live", daemon=True)
        self._worker.start()
        print(f"viewer: {self.url}", flush=True)

    # ------------------------------------------------------------ pause / resume
    @property
    def paused(self) -> bool:
        return not self._resume.is_set()

    def pause(self):
        self._resume.clear()
        self.gui_pause.label = "Resume training"
        self.gui_stats.content = self.gui_stats.content.split("  \n")[0] + "  \n**paused**"

    def resume(self):
        self._resume.set()
        self.gui_pause.label = "Pause training"
        self.gui_stats.content = self.gui_stats.content.split("  \n")[0]

    def wait_if_paused(self, poll: float = 0.1):
        """Blocks while the user has paused training in the page."""
        while not self._resume.wait(timeout=poll):
            pass

    # ------------------------------------------------------------ updates
    def _snapshot(self) -> dict:
        with torch.no_grad():
            return {k: v.detach().to("cpu", torch.float32, copy=True) for k, v in self.splats.items()
                    if isinstance(v, torch.Tensor)}

    def update(self, step: int, loss: float, num_gaussians: int | None = None):
        """Updates the readout and re-sends the scene, at most every `min_interval` s and only to open pages."""
        now = time.time()
        if now - self._last_push < self.min_interval:
            return
        self._last_push = now
        if num_gaussians is None:
            num_gaussians = int(self.splats["means"].shape[0])
        self.gui_stats.content = f"step **{step:,}** · loss **{loss:.4f}** · **{num_gaussians:,}** Gaussians" + (
            "  \n**paused**" if self.paused else "")
        if not self.app.streams():   # nobody is watching: skip the copy and the upload
            return
        snapshot = self._snapshot()
        self.snapshots += 1
        with self._cv:
            self._queued += 1
            self._pending = (snapshot, step, self._queued)   # replaces a snapshot not yet shown
            self._cv.notify_all()

    def _publish_loop(self):
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._pending is not None or self._closed)
                if self._closed:
                    return
                snapshot, step, ticket = self._pending
                self._pending = None
            try:
                self.app.set_scene(snapshot, None, label=f"training (live, step {step:,})", reset_camera=False)
            except Exception as e:   # never take training down with the viewer
                self.app.report_error(f"live update failed: {type(e).__name__}: {e}")
            with self._cv:
                self._shown = ticket
                self._cv.notify_all()

    def flush(self, timeout: float = 30.0) -> bool:
        """Waits until the latest snapshot is on show (tests, scripts)."""
        with self._cv:
            return self._cv.wait_for(lambda: self._shown == self._queued, timeout=timeout)

    def close(self):
        self._resume.set()
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self.app.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
