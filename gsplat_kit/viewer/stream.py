"""Server-side frames for one browser tab: a render loop with adaptive resolution, and the frame encoding.

Each `ClientStream` renders its client's camera with a renderer and a settings snapshot it asks for per
frame, sends the frame as the page's background image (JPEG colour + PNG depth, so the page's own
objects, e.g. the frusta, are occluded by the splats), and reports through callbacks. While the camera
moves the resolution adapts to hold a target frame rate; once it rests for `SETTLE_S` a full-resolution
frame follows.
"""
from __future__ import annotations

import dataclasses
import io
import math
import threading
import time
import warnings
from collections import deque
from typing import Callable

import numpy as np
from PIL import Image

from gsplat_kit.viewer.camera import camera_to_world
from gsplat_kit.viewer.render import RenderSettings, SplatRenderer

SETTLE_S = 0.25          # camera at rest this long -> send the sharp frame
MIN_MOVING_SCALE = 0.2   # below ~1/5 of the canvas a moving frame shows too little to steer by


@dataclasses.dataclass(frozen=True)
class StreamSettings:
    """What one frame is rendered with, read once per frame."""

    active: bool                # the server path is on and a scene is loaded
    render: RenderSettings
    max_resolution: int         # longest side of a sharp frame
    target_fps: float           # while the camera moves
    world_scale: float          # viewer units per scene unit
    depth: bool = True          # send depth for compositing with the page's objects


class ClientStream:
    """The render loop of one client: `camera_moved()` / `refresh()` wake it; `stop()` ends it."""

    def __init__(self, client, renderer: SplatRenderer, settings: Callable[[], StreamSettings],
                 on_frame: Callable[["ClientStream"], None], on_error: Callable[[str], None]):
        self.client, self.renderer = client, renderer
        self._settings, self._on_frame, self._on_error = settings, on_frame, on_error
        self.wake = threading.Event()
        self.last_move = 0.0
        self.sharp_pending = False
        self.move_scale = 0.5                 # resolution factor while moving, adapted per frame
        self.frames = 0                       # frames sent to this client
        self.frame_times: deque[float] = deque(maxlen=10)
        self.last_size = (0, 0)
        self.fps = 0.0
        self._stop = False
        self.thread = threading.Thread(target=self._run, name=f"viewer-client-{client.client_id}", daemon=True)
        self.thread.start()

    def camera_moved(self):
        self.last_move = time.time()
        self.wake.set()

    def refresh(self):
        """Re-render sharp (settings or scene changed)."""
        self.sharp_pending = True
        self.wake.set()

    def stop(self):
        self._stop = True
        self.wake.set()

    def _run(self):
        while not self._stop:
            woke = self.wake.wait(timeout=0.05)
            if self._stop:
                return
            settings = self._settings()
            if not settings.active:
                self.wake.clear()
                continue
            moving = time.time() - self.last_move < SETTLE_S
            if woke:
                self.wake.clear()
                if moving:
                    self.sharp_pending = True
                self._frame(settings, sharp=not moving)
            elif self.sharp_pending and not moving:
                self._frame(settings, sharp=True)

    def _frame(self, settings: StreamSettings, sharp: bool):
        try:
            cam = self.client.camera
            c2w = camera_to_world(cam, settings.world_scale)
            w_full, h_full = max(int(cam.image_width), 1), max(int(cam.image_height), 1)
        except (AssertionError, AttributeError):   # no camera message from this client yet
            return
        cap = settings.max_resolution / max(w_full, h_full)
        scale = min(1.0, cap) * (1.0 if sharp else self.move_scale)
        w, h = max(16, int(round(w_full * scale))), max(16, int(round(h_full * scale)))
        t0 = time.perf_counter()
        try:
            img, depth = self.renderer.render_frame(c2w, float(cam.fov), w, h, settings.render)
            if self._stop:      # the page closed while we rendered
                return
            send_frame(self.client, img, depth * settings.world_scale if settings.depth else None, 90 if sharp else 75)
        except Exception as e:  # keep the loop (and the server) alive; tell the page
            self._on_error(f"server-side render failed: {type(e).__name__}: {e}")
            self.sharp_pending = False
            return
        dt = time.perf_counter() - t0
        target = 1.0 / settings.target_fps
        if sharp:
            self.sharp_pending = False
            # a first guess for the next move from this frame (pixels ~ time); the control loop refines it
            guess = scale * math.sqrt(target / max(dt, 1e-4))
            self.move_scale = float(np.clip(min(self.move_scale, guess), MIN_MOVING_SCALE, 1.0))
        else:
            # proportional control of the pixel count: time ~ pixels, so scale ~ sqrt(target / dt)
            self.move_scale = float(np.clip(self.move_scale * np.clip(math.sqrt(target / max(dt, 1e-4)), 0.5, 1.5),
                                            MIN_MOVING_SCALE, 1.0))
        self.frames += 1
        self.frame_times.append(dt)
        self.fps = len(self.frame_times) / sum(self.frame_times)
        self.last_size = (w, h)
        self._on_frame(self)


class Streams:
    """The open tabs' streams by client id; stopped ones are kept until close() joins their threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self._live: dict[int, ClientStream] = {}
        self._stopped: list[ClientStream] = []

    def add(self, stream: ClientStream):
        with self._lock:
            self._live[stream.client.client_id] = stream

    def remove(self, client_id: int):
        with self._lock:
            stream = self._live.pop(client_id, None)
            if stream:
                stream.stop()
                self._stopped = [s for s in self._stopped if s.thread.is_alive()] + [stream]

    def live(self) -> list[ClientStream]:
        with self._lock:
            return list(self._live.values())

    def wait_first(self, timeout: float, url: str) -> ClientStream:
        """Blocks until a page has connected; returns its stream."""
        t_end = time.time() + timeout
        while time.time() < t_end:
            live = self.live()
            if live:
                return live[0]
            time.sleep(0.05)
        raise TimeoutError(f"no browser connected to {url} within {timeout:.0f} s")

    def refresh_all(self):
        for s in self.live():
            s.refresh()

    def close(self):
        with self._lock:
            streams = list(self._live.values()) + self._stopped
        for s in streams:
            s.stop()
        for s in streams:       # let a frame in flight finish: a thread killed inside the kernels aborts
            s.thread.join(timeout=60)


# ------------------------------------------------------------------------------------------------ frames

def encode_frame(img: np.ndarray, depth: np.ndarray | None, quality: int) -> tuple[bytes, bytes | None]:
    """(JPEG colour, PNG depth or None), as viser's `set_background_image(image, depth=...)` encodes them but
    with PIL: depth in viser's 24-bit fixed point (depth * 1e5, most significant byte in red; see its
    shader), zlib level 1."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    depth_png = None
    if depth is not None:
        fixed = np.clip(depth * 100_000.0, 0, 2 ** 24 - 1).astype("<u4")
        packed = np.ascontiguousarray(fixed.view(np.uint8).reshape(*depth.shape, 4)[..., 2::-1])
        dbuf = io.BytesIO()
        Image.fromarray(packed).save(dbuf, format="PNG", compress_level=1)
        depth_png = dbuf.getvalue()
    return buf.getvalue(), depth_png


def queue_background_image(client, jpeg: bytes, depth_png: bytes | None) -> None:
    """Sends one client an encoded background image. viser has no public call for a pre-encoded frame:
    `set_background_image` encodes itself, and without OpenCV its imageio PNG encoder is several times
    slower than PIL at zlib level 1 on a depth map, per frame. So this function is the viewer's one use
    of viser internals (its message type and a client's message queue); tests/test_viewer_server.py
    fails if a viser release changes them."""
    from viser import _messages

    with warnings.catch_warnings():   # a page that closed while we rendered: nothing to deliver, no noise
        warnings.filterwarnings("ignore", message=".*closed connection.*")
        client.scene._websock_interface.queue_message(
            _messages.BackgroundImageMessage(format="jpeg", rgb_data=jpeg, depth_data=depth_png))


def send_frame(client, img: np.ndarray, depth: np.ndarray | None, quality: int):
    """Streams a frame as the page's background image (colour, plus depth for compositing)."""
    queue_background_image(client, *encode_frame(img, depth, quality))


def encode_png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG")
    return buf.getvalue()


def screenshot_png(client, renderer: SplatRenderer | None, settings: RenderSettings, world_scale: float) -> bytes:
    """A PNG of what this client sees: rendered by `renderer` (the server path), or read back from the
    page's canvas when it is None (the client path)."""
    cam = client.camera
    w, h = int(cam.image_width), int(cam.image_height)
    if renderer is not None:
        img = renderer.render(camera_to_world(cam, world_scale), float(cam.fov), w, h, settings)
    else:
        img = client.get_render(height=h, width=w, transport_format="png", timeout=30.0)[..., :3]
    return encode_png(img)
