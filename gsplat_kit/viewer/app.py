"""The viewer: a viser web app with two rendering paths.

- client: the Gaussians go to the browser once (in chunks, cut to a budget for huge scenes) and
  viser's WebGL splatting renders them; no GPU is needed on the server.
- server: every browser camera move is rendered by `gsplat_kit.rasterization` (CUDA when present, the
  CPU kernels otherwise) and streamed back as a JPEG background image. While the camera moves the
  resolution adapts to hold a target frame rate; once it rests for `SETTLE_S` a full-resolution
  frame follows.
"""
from __future__ import annotations

import io
import math
import sys
import threading
import time
import warnings
from collections import deque

import numpy as np

from gsplat_kit.viewer.client_splats import chunks, client_buffers
from gsplat_kit.viewer.render import RENDER_MODES, RenderSettings, SplatRenderer
from gsplat_kit.viewer.source import CameraView, ViewerScene, as_camera_views, load_viewer_scene

RENDER_PATHS = {"client": "Client (WebGL)", "server": "Server (gsplat_kit)"}
SETTLE_S = 0.25          # camera at rest this long -> send the sharp frame
CHUNK = 100_000          # Gaussians per client-side splat node
MIN_MOVING_SCALE = 0.2   # below ~1/5 of the canvas a moving frame shows too little to steer by


def _rgb01(rgb) -> tuple[float, float, float]:
    return tuple(float(c) / 255.0 for c in rgb)


class ClientStream:
    """Server-side rendering loop for one browser tab: adaptive resolution, fps measurement."""

    def __init__(self, app: "ViewerApp", client):
        self.app, self.client = app, client
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
            if self.app.render_path != "server" or not self.app.renderer.ready:
                self.wake.clear()
                continue
            moving = time.time() - self.last_move < SETTLE_S
            if woke:
                self.wake.clear()
                if moving:
                    self.sharp_pending = True
                self._frame(sharp=not moving)
            elif self.sharp_pending and not moving:
                self._frame(sharp=True)

    def _frame(self, sharp: bool):
        app = self.app
        try:
            cam = self.client.camera
            c2w = app.camera_to_world(cam)
            w_full, h_full = max(int(cam.image_width), 1), max(int(cam.image_height), 1)
        except (AssertionError, AttributeError):   # no camera message from this client yet
            return
        cap = app.max_resolution / max(w_full, h_full)
        scale = min(1.0, cap) * (1.0 if sharp else self.move_scale)
        w, h = max(16, int(round(w_full * scale))), max(16, int(round(h_full * scale)))
        t0 = time.perf_counter()
        try:
            img, depth = app.renderer.render_frame(c2w, float(cam.fov), w, h, app.settings)
            if self._stop:      # the page closed while we rendered
                return
            send_frame(self.client, img, depth * app.world_scale if app.depth_compositing else None,
                       90 if sharp else 75)
        except Exception as e:  # keep the loop (and the server) alive; tell the page (once per distinct error)
            msg = f"server-side render failed: {type(e).__name__}: {e}"
            if msg != app.last_error:
                app.report_error(msg)
            self.sharp_pending = False
            return
        dt = time.perf_counter() - t0
        if sharp:
            self.sharp_pending = False
            # a first guess for the next move from this frame (pixels ~ time); the control loop refines it
            guess = scale * math.sqrt((1.0 / app.target_fps) / max(dt, 1e-4))
            self.move_scale = float(np.clip(min(self.move_scale, guess), MIN_MOVING_SCALE, 1.0))
        else:
            # proportional control of the pixel count: time ~ pixels, so scale ~ sqrt(target / dt)
            target = 1.0 / app.target_fps
            self.move_scale = float(np.clip(self.move_scale * np.clip(math.sqrt(target / max(dt, 1e-4)), 0.5, 1.5),
                                            MIN_MOVING_SCALE, 1.0))
        self.frames += 1
        self.frame_times.append(dt)
        self.fps = len(self.frame_times) / sum(self.frame_times)
        self.last_size = (w, h)
        app._on_frame(self)


def send_frame(client, img: np.ndarray, depth: np.ndarray | None, quality: int):
    """Streams a frame as the page's background image: JPEG colour plus, optionally, depth for compositing.

    Same message as viser's `set_background_image(image, depth=...)`, encoded with PIL directly: viser's
    fallback PNG encoder (without OpenCV) spends ~0.1-0.3 s on a 720p depth map, zlib level 1 ~0.05 s.
    """
    from PIL import Image
    from viser import _messages

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    depth_png = None
    if depth is not None:
        # viser's fixed point: depth * 1e5 as 24 bits, most significant byte in red (see its shader)
        fixed = np.clip(depth * 100_000.0, 0, 2 ** 24 - 1).astype("<u4")
        packed = np.ascontiguousarray(fixed.view(np.uint8).reshape(*depth.shape, 4)[..., 2::-1])
        dbuf = io.BytesIO()
        Image.fromarray(packed).save(dbuf, format="PNG", compress_level=1)
        depth_png = dbuf.getvalue()
    with warnings.catch_warnings():   # a page that closed while we rendered: nothing to deliver, no noise
        warnings.filterwarnings("ignore", message=".*closed connection.*")
        client.scene._websock_interface.queue_message(
            _messages.BackgroundImageMessage(format="jpeg", rgb_data=buf.getvalue(), depth_data=depth_png))


def _rotmat(wxyz) -> np.ndarray:
    w, x, y, z = (float(v) for v in wxyz)
    n = math.sqrt(w * w + x * x + y * y + z * z) or 1.0
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def _wxyz(R: np.ndarray) -> np.ndarray:
    import viser.transforms as vtf

    return vtf.SO3.from_matrix(np.asarray(R, np.float64)).wxyz


class ViewerApp:
    """A running viewer server. `set_scene()` / `load()` swap what it shows; `close()` stops it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, *, render_path: str | None = None,
                 device=None, client_budget: int = 500_000, max_resolution: int | None = None,
                 target_fps: float = 15.0, title: str = "gsplat_kit viewer"):
        import viser

        self.renderer = SplatRenderer(device)
        if render_path is None:
            render_path = "server" if self.renderer.device.type == "cuda" else "client"
        if render_path not in RENDER_PATHS:
            raise ValueError(f"render_path must be one of {sorted(RENDER_PATHS)}, got {render_path!r}")
        self.render_path = render_path
        self.settings = RenderSettings()
        self.client_budget = int(client_budget)
        # frames the CPU kernels can turn around interactively are smaller than what a GPU can
        self.max_resolution = int(max_resolution or (1920 if self.renderer.device.type == "cuda" else 1280))
        self.target_fps = float(target_fps)
        self.scene: ViewerScene | None = None
        self.last_error: str | None = None
        self.frames_sent = 0
        self.depth_compositing = True   # send depth with each frame: frusta are hidden behind the splats
        # The page works in "viewer units": the scene scaled so its radius is ~2. viser's fly keys move 2
        # units/s and its near plane is 0.01, so COLMAP scenes of any scale navigate alike.
        self.world_scale = 1.0
        self._streams: dict[int, ClientStream] = {}
        self._stopped_streams: list[ClientStream] = []   # joined in close(): a render may still be running
        self._lock = threading.RLock()
        self._splat_handles: list = []
        self._client_splats_stale = True
        self._frusta: list = []
        self._views: list[CameraView] = []
        self._scene_version = 0
        self._last_readout = 0.0

        self.server = viser.ViserServer(host=host, port=port, label=title, verbose=False)
        self.host = host
        self.port = self.server.get_port()
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.port}"
        self._build_gui()
        self.server.on_client_connect(self._on_connect)
        self.server.on_client_disconnect(self._on_disconnect)
        self._apply_background()

    # ---------------------------------------------------------------- GUI
    def _build_gui(self):
        gui = self.server.gui
        with gui.add_folder("Scene"):
            self.gui_status = gui.add_markdown("*No scene loaded yet.*")
            self.gui_error = gui.add_markdown("", visible=False)
            self.gui_path = gui.add_text("Path", "", hint="A .ply, a checkpoint or a run folder on the server")
            self.gui_load = gui.add_button("Load", hint="Open the path above (errors show here and in the terminal)")
        with gui.add_folder("Rendering"):
            self.gui_path_dd = gui.add_dropdown("Renderer", tuple(RENDER_PATHS.values()),
                                                initial_value=RENDER_PATHS[self.render_path],
                                                hint="Client: WebGL splatting in the browser. Server: "
                                                     "gsplat_kit's rasteriser, streamed as images.")
            self.gui_mode = gui.add_dropdown("Render mode", RENDER_MODES, initial_value="RGB",
                                             hint="Depth and alpha are rendered by the server path")
            self.gui_sh = gui.add_slider("SH degree", 0, 3, 1, 3, hint="Server path (the client path uses degree 0)")
            self.gui_scale = gui.add_slider("Scale modifier", 0.05, 2.0, 0.05, 1.0,
                                            hint="Multiplies every Gaussian's size (both paths)")
            self.gui_bg = gui.add_rgb("Background", (0, 0, 0))
            self.gui_maxres = gui.add_slider("Max resolution", 256, 3840, 64, self.max_resolution,
                                             hint="Longest side of server-rendered frames when the camera rests")
            self.gui_fps_target = gui.add_slider("Target fps (moving)", 2, 60, 1, int(self.target_fps),
                                                 hint="The server path lowers the resolution to hold this "
                                                      "frame rate while the camera moves")
            self.gui_budget = gui.add_number("Client splat budget", self.client_budget, min=10_000, step=10_000,
                                             hint="Most Gaussians sent to the browser (the most visible ones)")
            self.gui_fps = gui.add_markdown("Server fps: –")
            self.gui_shot = gui.add_button("Screenshot", hint="Download a PNG of the current view")
        with gui.add_folder("Cameras"):
            self.gui_frusta = gui.add_checkbox("Show training cameras", True)
            gui.add_markdown("Click a frustum to jump to that camera. Mouse: orbit / pan / zoom; "
                             "keys: W A S D Q E to fly, arrows to turn.")

        self.gui_load.on_click(lambda ev: self.load(self.gui_path.value.strip()))
        self.gui_path_dd.on_update(lambda _: self.set_render_path(
            next(k for k, v in RENDER_PATHS.items() if v == self.gui_path_dd.value)))
        self.gui_mode.on_update(lambda _: self._mode_changed(self.gui_mode.value))
        self.gui_sh.on_update(lambda _: self._settings_changed(sh_degree=int(self.gui_sh.value)))
        self.gui_scale.on_update(lambda _: self._settings_changed(scale_modifier=float(self.gui_scale.value),
                                                                  client=True))
        self.gui_bg.on_update(lambda _: self._settings_changed(background=_rgb01(self.gui_bg.value), bg=True))
        self.gui_maxres.on_update(lambda _: self._set_attr_refresh("max_resolution", int(self.gui_maxres.value)))
        self.gui_fps_target.on_update(lambda _: setattr(self, "target_fps", float(self.gui_fps_target.value)))
        self.gui_budget.on_update(lambda _: self._budget_changed(int(self.gui_budget.value)))
        self.gui_frusta.on_update(lambda _: self._set_frusta_visible(self.gui_frusta.value))
        self.gui_shot.on_click(self._screenshot)

    # ---------------------------------------------------------------- clients
    def _on_connect(self, client):
        stream = ClientStream(self, client)
        with self._lock:
            self._streams[client.client_id] = stream
        client.camera.on_update(lambda _cam: stream.camera_moved())
        if self.last_error:
            client.add_notification("Could not open the scene", self.last_error, color="red")
        stream.refresh()

    def _on_disconnect(self, client):
        with self._lock:
            stream = self._streams.pop(client.client_id, None)
        if stream:
            stream.stop()
            with self._lock:
                self._stopped_streams = [s for s in self._stopped_streams if s.thread.is_alive()] + [stream]

    def streams(self) -> list[ClientStream]:
        with self._lock:
            return list(self._streams.values())

    def _refresh_all(self):
        for s in self.streams():
            s.refresh()

    def _on_frame(self, stream: ClientStream):
        self.frames_sent += 1
        now = time.time()
        if now - self._last_readout > 0.25:  # GUI updates are broadcast: keep them few
            self._last_readout = now
            w, h = stream.last_size
            self.gui_fps.content = (f"Server fps: **{stream.fps:.1f}** ({1000.0 / max(stream.fps, 1e-6):.0f} ms, "
                                    f"{w}x{h}, {self.renderer.device.type})")

    # ---------------------------------------------------------------- settings
    def _settings_changed(self, client: bool = False, bg: bool = False, **kw):
        for k, v in kw.items():
            setattr(self.settings, k, v)
        if bg:
            self._apply_background()
        if client:
            self._client_splats_stale = True
            if self.render_path == "client":
                self._send_client_splats()
        self._refresh_all()

    def _mode_changed(self, mode: str):
        # WebGL splatting only draws colour: depth and alpha come from the server path, so switch to it
        if mode != "RGB" and self.render_path == "client":
            self.set_render_path("server")
        self._settings_changed(mode=mode)

    def _set_attr_refresh(self, name, value):
        setattr(self, name, value)
        self._refresh_all()

    def _budget_changed(self, budget: int):
        self.client_budget = max(1, budget)
        self._client_splats_stale = True
        if self.render_path == "client":
            self._send_client_splats()

    def set_render_path(self, path: str):
        """'client' (WebGL splatting in the browser) or 'server' (gsplat_kit renders, streams images)."""
        if path not in RENDER_PATHS:
            raise ValueError(f"render path must be one of {sorted(RENDER_PATHS)}, got {path!r}")
        self.render_path = path
        if self.gui_path_dd.value != RENDER_PATHS[path]:
            self.gui_path_dd.value = RENDER_PATHS[path]
        if path == "client":
            self._apply_background()       # replaces the streamed frames with the plain colour
            self._send_client_splats()
            for h in self._splat_handles:
                h.visible = True
        else:
            for h in self._splat_handles:
                h.visible = False
            self._refresh_all()

    def _apply_background(self):
        bg = np.empty((8, 8, 3), np.uint8)
        bg[:] = (np.asarray(self.settings.background) * 255 + 0.5).astype(np.uint8)
        self.server.scene.set_background_image(bg, format="png")

    # ---------------------------------------------------------------- scene
    def set_scene(self, splats: dict, views=None, label: str = "scene", reset_camera: bool = True):
        """Shows these splats (raw parameters, gsplat names). Thread-safe; returns when the server path is ready."""
        from gsplat_kit.viewer.source import check_splats

        splats = check_splats(splats, label)
        scene = ViewerScene(splats, as_camera_views(views) if views is not None else self._views, label)
        with self._lock:
            self.scene = scene
            self._scene_version += 1
        self.renderer.set_splats(splats)
        self.gui_sh.max = max(scene.sh_degree, 0) if scene.sh_degree > 0 else 1
        self.gui_sh.value = min(int(self.gui_sh.value), scene.sh_degree) if scene.sh_degree > 0 else 0
        self.settings.sh_degree = int(self.gui_sh.value)
        self._set_status()
        if views is not None:
            self._views = scene.views
        if reset_camera:
            self.world_scale = 2.0 / self._scene_frame()[1]
        if views is not None or reset_camera:
            self._draw_frusta()
        if reset_camera:
            self._set_initial_camera()
        self._client_splats_stale = True
        if self.render_path == "client":
            self._send_client_splats()
        self._refresh_all()

    def _set_status(self, extra: str = ""):
        s = self.scene
        if s is None:
            return
        self.gui_status.content = (f"**{s.num_gaussians:,}** Gaussians, SH degree {s.sh_degree}, "
                                   f"{len(s.views)} training cameras  \n`{s.label}`" + extra)

    def load(self, path: str, *, background: bool = True):
        """Opens PATH (in a thread by default, so the page stays live); errors go to the terminal and page."""
        def work():
            self.gui_status.content = f"*Loading* `{path}` …"
            t0 = time.time()
            try:
                scene = load_viewer_scene(path)
            except (OSError, ValueError) as e:
                self.report_error(str(e))
                return False
            self.set_scene(scene.splats, scene.views, scene.label)
            self.last_error = None
            self.gui_error.visible = False
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
        shown = msg.replace("`", "'").replace("<", "&lt;")
        self.gui_error.content = (f"<span style='color:#e03131'>**Error:** {shown}</span>" +
                                  ("  \n(still showing the previous scene)" if self.scene else ""))
        self.gui_error.visible = True
        for client in list(self.server.get_clients().values()):
            try:
                client.add_notification("Could not open the scene", msg, color="red")
            except Exception:
                pass

    def _send_client_splats(self):
        """Replaces the browser's splat nodes with the current scene (chunked; budget applies)."""
        with self._lock:
            scene = self.scene
            if scene is None or not self._client_splats_stale:
                return
            self._client_splats_stale = False
            centers, covs, rgbs, opac = client_buffers(scene.splats, self.settings.scale_modifier, self.client_budget)
            k = self.world_scale
            centers, covs = centers * k, covs * (k * k)
            # update the existing nodes in place (no flicker during live training), add or drop the rest
            handles, self._splat_handles = self._splat_handles, []
            n = centers.shape[0]
            for i, (a, b) in enumerate(chunks(n, CHUNK)):
                part = (centers[a:b], covs[a:b], rgbs[a:b], opac[a:b])
                if i < len(handles):
                    handles[i].set_gaussians(*part)
                    self._splat_handles.append(handles[i])
                else:
                    self._splat_handles.append(self.server.scene.add_gaussian_splats(
                        f"/splats/{i}", centers=part[0], covariances=part[1], rgbs=part[2], opacities=part[3],
                        visible=self.render_path == "client"))
                if b < n:
                    self.server.flush()
                    time.sleep(0.02)  # let the page digest a chunk before the next one
            for h in handles[len(self._splat_handles):]:
                h.remove()
            if n < scene.num_gaussians:
                self._set_status(f"  \nclient path shows the {n:,} most visible")

    # ---------------------------------------------------------------- cameras
    def _scene_frame(self):
        """(centre, radius, up) of the scene for the initial camera and the frustum size."""
        means = self.scene.splats["means"].numpy()
        if means.shape[0] > 200_000:
            means = means[np.random.default_rng(0).choice(means.shape[0], 200_000, replace=False)]
        lo, hi = np.percentile(means, [5, 95], axis=0)
        centre = 0.5 * (lo + hi)
        radius = float(np.linalg.norm(hi - lo)) * 0.5 + 1e-6
        if self._views:
            up = -np.mean([v.camtoworld[:3, 1] for v in self._views], axis=0)
            up = up / (np.linalg.norm(up) + 1e-12)
        else:
            up = np.array([0.0, -1.0, 0.0])  # COLMAP-style worlds: y points down
        return centre, radius, up

    def _set_initial_camera(self):
        centre, radius, up = self._scene_frame()
        k = self.world_scale
        ic = self.server.initial_camera
        if self._views:
            # behind and above the first training camera, looking at the scene: its frustum and the scene show
            v = self._views[0]
            pos = v.camtoworld[:3, 3]
            back = pos - centre
            ic.position = tuple(k * (pos + 0.5 * back + 0.25 * float(np.linalg.norm(back)) * up))
            ic.look_at = tuple(k * centre)
            ic.fov = v.fov_y
        else:
            side = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 0.0, 1.0])
            side /= np.linalg.norm(side)
            ic.position = tuple(k * (centre + 2.2 * radius * side + 0.6 * radius * up))
            ic.look_at = tuple(k * centre)
        ic.up = tuple(up)
        # pages already open keep their camera otherwise (the initial camera applies to new connections)
        for client in list(self.server.get_clients().values()):
            try:
                with client.atomic():
                    client.camera.up_direction = ic.up
                    client.camera.position = ic.position
                    client.camera.look_at = ic.look_at
                    if ic.fov is not None:
                        client.camera.fov = ic.fov
            except Exception:   # a page that disconnects meanwhile
                pass

    def _draw_frusta(self):
        for f in self._frusta:
            f.remove()
        self._frusta = []
        if not self._views:
            return
        centres = np.array([v.camtoworld[:3, 3] for v in self._views])
        k = self.world_scale
        if len(centres) > 1:
            # half the median spacing of neighbouring cameras: frusta of a dense capture do not overlap
            sub = centres[:: max(1, len(centres) // 500)]
            d = np.linalg.norm(sub[:, None] - sub[None], axis=-1)
            np.fill_diagonal(d, np.inf)
            extent = float(np.linalg.norm(centres.max(0) - centres.min(0)))
            scale = min(0.5 * float(np.median(d.min(1))), 0.05 * extent) * k
        else:
            scale = 0.1 * 2.0   # one camera: a tenth of the normalised scene radius
        scale = max(scale, 1e-3)
        for i, v in enumerate(self._views):
            handle = self.server.scene.add_camera_frustum(
                f"/cameras/{i:04d}", fov=v.fov_y, aspect=v.width / v.height, scale=scale,
                thickness=2.0, thickness_units="screen", wxyz=_wxyz(v.camtoworld[:3, :3]), position=k * v.camtoworld[:3, 3],
                color=(255, 140, 0), visible=bool(self.gui_frusta.value))
            handle.on_click(lambda ev, v=v: self.jump_to(ev.client, v))
            self._frusta.append(handle)

    def _set_frusta_visible(self, visible: bool):
        for f in self._frusta:
            f.visible = visible

    def jump_to(self, client, view: CameraView):
        """Moves this client's camera to a training camera."""
        with client.atomic():
            client.camera.fov = view.fov_y
            client.camera.wxyz = _wxyz(view.camtoworld[:3, :3])
            client.camera.position = self.world_scale * view.camtoworld[:3, 3]

    # ---------------------------------------------------------------- screenshot
    def _screenshot(self, event):
        client = event.client
        if client is None:
            return
        try:
            cam = client.camera
            w, h = int(cam.image_width), int(cam.image_height)
            if self.render_path == "server" and self.renderer.ready:
                img = self.renderer.render(self.camera_to_world(cam), float(cam.fov), w, h, self.settings)
            else:
                img = client.get_render(height=h, width=w, transport_format="png", timeout=30.0)[..., :3]
            client.send_file_download(f"gsplat_kit_{time.strftime('%Y%m%d_%H%M%S')}.png", encode_png(img),
                                      save_immediately=True)
        except Exception as e:
            self.report_error(f"screenshot failed: {type(e).__name__}: {e}")

    def camera_to_world(self, cam) -> np.ndarray:
        """A page camera (viser handle, viewer units) as an OpenCV camera-to-world matrix in scene units."""
        c2w = np.eye(4)
        c2w[:3, :3] = _rotmat(cam.wxyz)
        c2w[:3, 3] = np.asarray(cam.position, np.float64) / self.world_scale
        return c2w

    # ---------------------------------------------------------------- lifecycle
    def wait_for_client(self, timeout: float = 30.0) -> ClientStream:
        """Blocks until a browser has connected and sent its camera (tests, scripts)."""
        t_end = time.time() + timeout
        while time.time() < t_end:
            s = self.streams()
            if s:
                return s[0]
            time.sleep(0.05)
        raise TimeoutError(f"no browser connected to {self.url} within {timeout:.0f} s")

    def close(self):
        with self._lock:
            streams = list(self._streams.values()) + self._stopped_streams
        for s in streams:
            s.stop()
        for s in streams:       # let a frame in flight finish: a thread killed inside the kernels aborts
            s.thread.join(timeout=60)
        self.server.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def encode_png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG")
    return buf.getvalue()
