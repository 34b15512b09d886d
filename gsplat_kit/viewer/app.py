"""The viewer: a viser web app with two rendering paths.

- client: the Gaussians go to the browser once (in chunks, cut to a budget for huge scenes) and
  viser's WebGL splatting renders them; no GPU is needed on the server (`client_splats`).
- server: every browser camera move is rendered by `gsplat_kit.rasterization` (CUDA when present, the
  CPU kernels otherwise) and streamed back as a JPEG background image (`stream`).

`ViewerApp` coordinates: it owns the scene and the settings and hands them to the panels (`panels`), the
per-client streams, the page's splat and frustum nodes, and the camera geometry (`camera`).
"""
from __future__ import annotations

import dataclasses
import sys
import threading
import time

import numpy as np

from gsplat_kit.scene.splats import Splats
from gsplat_kit.viewer.camera import Frusta, go_home, home_camera, jump_to_view, scene_frame, set_home
from gsplat_kit.viewer.client_splats import ClientSplats
from gsplat_kit.viewer.panels import RENDER_PATHS, build_panels
from gsplat_kit.viewer.render import RenderSettings, SplatRenderer
from gsplat_kit.viewer.server import start_server
from gsplat_kit.viewer.source import CameraView, ViewerScene, as_camera_views, load_viewer_scene
from gsplat_kit.viewer.stream import ClientStream, Streams, StreamSettings, screenshot_png


class ViewerApp:
    """A running viewer server. `set_scene()` / `load()` swap what it shows; `close()` stops it.

    port: an exact port (0: any free one; None: 8080 or the next free one). An address that cannot be
    listened on raises a UserError at once."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = 8080, *, render_path: str | None = None,
                 device=None, client_budget: int = 500_000, max_resolution: int | None = None,
                 target_fps: float = 15.0, title: str = "gsplat_kit viewer"):
        self.renderer = SplatRenderer(device)
        cuda = self.renderer.device.type == "cuda"
        self.render_path = render_path or ("server" if cuda else "client")
        if self.render_path not in RENDER_PATHS:
            raise ValueError(f"render_path must be one of {sorted(RENDER_PATHS)}, got {render_path!r}")
        self.settings = RenderSettings()
        self.client_budget = int(client_budget)
        # frames the CPU kernels can turn around interactively are smaller than what a GPU can
        self.max_resolution = int(max_resolution or (1920 if cuda else 1280))
        self.target_fps = float(target_fps)
        self.depth_compositing = True   # send depth with each frame: frusta are hidden behind the splats
        self.scene: ViewerScene | None = None
        self.views: list[CameraView] = []
        self.world_scale = 1.0          # viewer units per scene unit (see camera.py)
        self.home = None                # the camera the page opens at (camera.HomeCamera)
        self.last_error: str | None = None
        self.frames_sent = 0
        self._lock = threading.RLock()
        self._last_readout = 0.0

        self.server = start_server(host, port, title)
        self.host, self.port = host, self.server.get_port()
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.port}"
        self._streams = Streams()
        self.splat_nodes = ClientSplats(self.server.scene, self.server.flush)
        self.frusta = Frusta(self.server.scene, lambda client, view: jump_to_view(client, view, self.world_scale))
        self.panels = build_panels(self.server.gui, self)
        self.server.on_client_connect(self._on_connect)
        self.server.on_client_disconnect(lambda client: self._streams.remove(client.client_id))
        self._apply_background()

    # ---------------------------------------------------------------- clients
    def _on_connect(self, client):
        stream = ClientStream(client, self.renderer, self._stream_settings, self._on_frame, self._on_render_error)
        self._streams.add(stream)
        client.camera.on_update(lambda _cam: stream.camera_moved())
        if self.last_error:
            client.add_notification("Could not open the scene", self.last_error, color="red")
        stream.refresh()

    def streams(self) -> list[ClientStream]:
        return self._streams.live()

    def _stream_settings(self) -> StreamSettings:
        return StreamSettings(self.render_path == "server" and self.renderer.ready, dataclasses.replace(self.settings),
                              self.max_resolution, self.target_fps, self.world_scale, self.depth_compositing)

    def _on_frame(self, stream: ClientStream):
        self.frames_sent += 1
        now = time.time()
        if now - self._last_readout > 0.25:  # GUI updates are broadcast: keep them few
            self._last_readout = now
            self.panels.show_fps(stream.fps, stream.last_size, self.renderer.device.type)

    def _on_render_error(self, msg: str):
        if msg != self.last_error:     # once per distinct error
            self.report_error(msg)

    # ---------------------------------------------------------------- settings
    def update_settings(self, **changes):
        """Changes RenderSettings fields (mode, sh_degree, scale_modifier, background) and re-renders."""
        for k, v in changes.items():
            setattr(self.settings, k, v)
        if "background" in changes:
            self._apply_background()
        if "scale_modifier" in changes:
            self._upload_client_splats(changed=True)
        self._streams.refresh_all()

    def set_mode(self, mode: str):
        # WebGL splatting only draws colour: depth and alpha come from the server path, so switch to it
        if mode != "RGB" and self.render_path == "client":
            self.set_render_path("server")
        self.update_settings(mode=mode)

    def set_max_resolution(self, pixels: int):
        self.max_resolution = int(pixels)
        self._streams.refresh_all()

    def set_client_budget(self, budget: int):
        self.client_budget = max(1, int(budget))
        self._upload_client_splats(changed=True)

    def set_render_path(self, path: str):
        """'client' (WebGL splatting in the browser) or 'server' (gsplat_kit renders, streams images)."""
        if path not in RENDER_PATHS:
            raise ValueError(f"render path must be one of {sorted(RENDER_PATHS)}, got {path!r}")
        self.render_path = path
        self.panels.show_render_path(path)
        if path == "client":
            self._apply_background()       # replaces the streamed frames with the plain colour
            self._upload_client_splats()
        self.splat_nodes.set_visible(path == "client")
        if path == "server":
            self._streams.refresh_all()

    def _apply_background(self):
        bg = np.empty((8, 8, 3), np.uint8)
        bg[:] = (np.asarray(self.settings.background) * 255 + 0.5).astype(np.uint8)
        self.server.scene.set_background_image(bg, format="png")

    # ---------------------------------------------------------------- scene
    def set_scene(self, splats, views=None, label: str = "scene", reset_camera: bool = True):
        """Shows these splats (raw parameters, gsplat names; a dict or `Splats`) with these training cameras
        (None: keep the current ones). Thread-safe; returns when the server path is ready."""
        splats = Splats.checked(splats.params if isinstance(splats, Splats) else splats, label)
        with self._lock:
            self.views = as_camera_views(views) if views is not None else self.views
            self.scene = ViewerScene(splats, self.views, label)
            self.splat_nodes.stale = True
        self.renderer.set_splats(splats)
        self.settings.sh_degree = self.panels.set_sh_range(self.scene.sh_degree)
        self.panels.show_status(self.scene)
        if reset_camera:
            frame = scene_frame(splats)
            self.world_scale, self.home = frame.world_scale, home_camera(frame, self.views)
        if views is not None or reset_camera:
            self.frusta.draw(self.views, self.world_scale)
        if reset_camera:
            set_home(self.server, self.home, self.world_scale)
        self._upload_client_splats()
        self._streams.refresh_all()

    def load(self, path: str, *, background: bool = True):
        """Opens PATH (in a thread by default, so the page stays live); errors go to the terminal and page."""
        def work():
            self.panels.status.content = f"*Loading* `{path}` …"
            t0 = time.time()
            try:
                scene = load_viewer_scene(path)
            except (OSError, ValueError) as e:
                self.report_error(str(e))
                return False
            self.set_scene(scene.splats, scene.views, scene.label)
            self.last_error = None
            self.panels.show_error(None, True)
            print(f"loaded {scene.label}: {scene.num_gaussians:,} Gaussians, {len(scene.views)} cameras "
                  f"({time.time() - t0:.1f} s)", flush=True)
            return True

        if background:
            threading.Thread(target=work, name="viewer-load", daemon=True).start()
            return None
        return work()

    def report_error(self, msg: str):
        """Prints to the terminal (no traceback) and shows it in every open page; the server keeps running."""
        self.last_error = msg
        print(f"error: {msg}", file=sys.stderr, flush=True)
        self.panels.show_error(msg, self.scene is not None)
        for client in list(self.server.get_clients().values()):
            try:
                client.add_notification("Could not open the scene", msg, color="red")
            except Exception:
                pass

    def _upload_client_splats(self, changed: bool = False):
        """Sends the scene to the page's WebGL splatting when the client path shows it."""
        with self._lock:
            self.splat_nodes.stale |= changed
            if self.scene is None or self.render_path != "client":
                return
            shown = self.splat_nodes.upload(self.scene.splats, self.settings.scale_modifier, self.client_budget,
                                            self.world_scale, visible=True)
            if shown is not None and shown < self.scene.num_gaussians:
                self.panels.show_status(self.scene, f"  \nclient path shows the {shown:,} most visible")

    # ---------------------------------------------------------------- cameras
    def reset_view(self, client):
        """Moves this page's camera back to the home camera ("Reset view")."""
        if self.home is not None:
            go_home(client, self.home, self.world_scale)

    def screenshot(self, client):
        """Sends this page a PNG download of its current view."""
        if client is None:
            return
        try:
            server_path = self.render_path == "server" and self.renderer.ready
            png = screenshot_png(client, self.renderer if server_path else None, self.settings, self.world_scale)
            client.send_file_download(f"gsplat_kit_{time.strftime('%Y%m%d_%H%M%S')}.png", png, save_immediately=True)
        except Exception as e:
            self.report_error(f"screenshot failed: {type(e).__name__}: {e}")

    # ---------------------------------------------------------------- lifecycle
    def wait_for_client(self, timeout: float = 30.0) -> ClientStream:
        """Blocks until a browser has connected (tests, scripts)."""
        return self._streams.wait_first(timeout, self.url)

    def close(self):
        self._streams.close()
        self.server.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
