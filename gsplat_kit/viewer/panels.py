"""The viewer's GUI panels (Scene, Rendering, Cameras) and what each control calls on the app."""
from __future__ import annotations

import dataclasses

from gsplat_kit.viewer.render import RENDER_MODES

RENDER_PATHS = {"client": "Client (WebGL)", "server": "Server (gsplat_kit)"}


def _rgb01(rgb) -> tuple[float, float, float]:
    return tuple(float(c) / 255.0 for c in rgb)


@dataclasses.dataclass
class Panels:
    status: object       # markdown: what is loaded
    error: object        # markdown: the last error, hidden when none
    path: object         # text: a path on the server to open
    load: object
    renderer: object     # dropdown: RENDER_PATHS
    mode: object
    sh: object
    scale: object
    bg: object
    maxres: object
    fps_target: object
    budget: object
    fps: object          # markdown: the server frame rate
    shot: object
    frusta: object
    reset: object

    def show_status(self, scene, extra: str = ""):
        self.status.content = (f"**{scene.num_gaussians:,}** Gaussians, SH degree {scene.sh_degree}, "
                               f"{len(scene.views)} training cameras  \n`{scene.label}`" + extra)

    def show_error(self, msg: str | None, have_scene: bool):
        if msg is None:
            self.error.visible = False
            return
        shown = msg.replace("`", "'").replace("<", "&lt;")
        self.error.content = (f"<span style='color:#e03131'>**Error:** {shown}</span>" +
                              ("  \n(still showing the previous scene)" if have_scene else ""))
        self.error.visible = True

    def show_fps(self, fps: float, size: tuple[int, int], device: str):
        w, h = size
        self.fps.content = f"Server fps: **{fps:.1f}** ({1000.0 / max(fps, 1e-6):.0f} ms, {w}x{h}, {device})"

    def set_sh_range(self, sh_degree: int) -> int:
        """Limits the SH slider to what the scene holds; returns the degree now selected."""
        self.sh.max = sh_degree if sh_degree > 0 else 1
        self.sh.value = min(int(self.sh.value), sh_degree)
        return int(self.sh.value)

    def show_render_path(self, path: str):
        if self.renderer.value != RENDER_PATHS[path]:
            self.renderer.value = RENDER_PATHS[path]


def build_panels(gui, app) -> Panels:
    """Adds the panels to viser's GUI and connects each control to the app."""
    with gui.add_folder("Scene"):
        status = gui.add_markdown("*No scene loaded yet.*")
        error = gui.add_markdown("", visible=False)
        path = gui.add_text("Path", "", hint="A .ply, a checkpoint or a run folder on the server")
        load = gui.add_button("Load", hint="Open the path above (errors show here and in the terminal)")
    with gui.add_folder("Rendering"):
        renderer = gui.add_dropdown("Renderer", tuple(RENDER_PATHS.values()), initial_value=RENDER_PATHS[app.render_path],
                                    hint="Client: WebGL splatting in the browser. Server: gsplat_kit's rasteriser, "
                                         "streamed as images.")
        mode = gui.add_dropdown("Render mode", RENDER_MODES, initial_value="RGB",
                                hint="Depth and alpha are rendered by the server path")
        sh = gui.add_slider("SH degree", 0, 3, 1, 3, hint="Server path (the client path uses degree 0)")
        scale = gui.add_slider("Scale modifier", 0.05, 2.0, 0.05, 1.0, hint="Multiplies every Gaussian's size (both paths)")
        bg = gui.add_rgb("Background", (0, 0, 0))
        maxres = gui.add_slider("Max resolution", 256, 3840, 64, app.max_resolution,
                                hint="Longest side of server-rendered frames when the camera rests")
        fps_target = gui.add_slider("Target fps (moving)", 2, 60, 1, int(app.target_fps),
                                    hint="The server path lowers the resolution to hold this frame rate while the "
                                         "camera moves")
        budget = gui.add_number("Client splat budget", app.client_budget, min=10_000, step=10_000,
                                hint="Most Gaussians sent to the browser (the most visible ones)")
        fps = gui.add_markdown("Server fps: –")
        shot = gui.add_button("Screenshot", hint="Download a PNG of the current view")
    with gui.add_folder("Cameras"):
        reset = gui.add_button("Reset view", hint="Back to the first training camera, or to a view of the whole scene")
        frusta = gui.add_checkbox("Show training cameras", True)
        gui.add_markdown("Click a frustum to jump to that camera. Mouse: orbit / pan / zoom; "
                         "keys: W A S D Q E to fly, arrows to turn.")
    p = Panels(status, error, path, load, renderer, mode, sh, scale, bg, maxres, fps_target, budget, fps, shot,
               frusta, reset)

    load.on_click(lambda _: app.load(path.value.strip()))
    renderer.on_update(lambda _: app.set_render_path(next(k for k, v in RENDER_PATHS.items() if v == renderer.value)))
    mode.on_update(lambda _: app.set_mode(mode.value))
    sh.on_update(lambda _: app.update_settings(sh_degree=int(sh.value)))
    scale.on_update(lambda _: app.update_settings(scale_modifier=float(scale.value)))
    bg.on_update(lambda _: app.update_settings(background=_rgb01(bg.value)))
    maxres.on_update(lambda _: app.set_max_resolution(int(maxres.value)))
    fps_target.on_update(lambda _: setattr(app, "target_fps", float(fps_target.value)))
    budget.on_update(lambda _: app.set_client_budget(int(budget.value)))
    frusta.on_update(lambda _: app.frusta.set_visible(frusta.value))
    shot.on_click(lambda ev: app.screenshot(ev.client))
    reset.on_click(lambda ev: app.reset_view(ev.client))
    return p
