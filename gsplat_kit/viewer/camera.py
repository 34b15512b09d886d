"""Camera geometry of the viewer.

- page cameras (viser: wxyz + position in "viewer units") <-> OpenCV camera-to-world in scene units;
- the scene's robust frame: centre and extent of the opacity-weighted 5-95 % box (floaters and
  far-away background splats do not move it), and its up direction (principal axes / COLMAP's -y);
- the home camera the page opens at and "Reset view" returns to: the first training camera when the
  cameras are known (the user sees what they photographed), else outside the scene looking at its
  centre, framed so the box fills the view;
- the training cameras as clickable frusta.

The page works in viewer units: the scene scaled so its robust radius is 2. viser's fly keys move 2 units/s
and its near plane is 0.01, so scenes of any scale navigate alike (`world_scale` = viewer units per scene unit).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import viser.transforms as vtf

from gsplat_kit.scene.splats import Splats, quat_to_rotmat
from gsplat_kit.viewer.source import CameraView

VIEWER_RADIUS = 2.0
COLMAP_UP = np.array([0.0, -1.0, 0.0])    # COLMAP / OpenCV worlds: y points down
COLMAP_FORWARD = np.array([0.0, 0.0, 1.0])  # ... and a reconstruction's frame is often its first camera's
HOME_FOV = math.radians(50.0)
HOME_ELEVATION = math.radians(20.0)       # the framing view looks slightly down on the scene
HOME_ASPECT = 4 / 3                       # the narrowest page the framing plans for (width / height)
MAX_POINTS = 200_000                      # a random subset this big gives the same percentiles


def rotmat(wxyz) -> np.ndarray:
    """(w, x, y, z), any norm -> 3x3 rotation."""
    return quat_to_rotmat(torch.as_tensor(np.asarray(wxyz, np.float64))).numpy()


def wxyz(R: np.ndarray) -> np.ndarray:
    return vtf.SO3.from_matrix(np.asarray(R, np.float64)).wxyz


def camera_to_world(cam, world_scale: float) -> np.ndarray:
    """A page camera (viser handle, viewer units) as an OpenCV camera-to-world matrix in scene units."""
    c2w = np.eye(4)
    c2w[:3, :3] = rotmat(cam.wxyz)
    c2w[:3, 3] = np.asarray(cam.position, np.float64) / world_scale
    return c2w


@dataclasses.dataclass(frozen=True)
class SceneFrame:
    centre: np.ndarray   # [3], scene units: the centre of the robust box
    half: np.ndarray     # [3], the box's half-sizes along the world axes
    up: np.ndarray       # [3], unit

    @property
    def radius(self) -> float:
        return float(np.linalg.norm(self.half)) + 1e-6

    @property
    def world_scale(self) -> float:
        return VIEWER_RADIUS / self.radius

    def reach(self, direction: np.ndarray) -> float:
        """How far the box reaches from its centre along a unit direction (its support function)."""
        return float(np.abs(self.half) @ np.abs(direction))


@dataclasses.dataclass(frozen=True)
class HomeCamera:
    """A page camera in scene units: where the page opens and "Reset view" returns."""

    position: np.ndarray
    look_at: np.ndarray
    up: np.ndarray
    fov: float


def weighted_quantiles(x: np.ndarray, w: np.ndarray, qs) -> np.ndarray:
    """Quantiles of the columns of x [N, D] under weights w [N] -> [len(qs), D]."""
    out = np.empty((len(qs), x.shape[1]))
    for d in range(x.shape[1]):
        order = np.argsort(x[:, d])
        cdf = np.cumsum(w[order])
        cdf /= cdf[-1]
        out[:, d] = x[order, d][np.minimum(np.searchsorted(cdf, qs), len(order) - 1)]
    return out


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v) + 1e-12)


def estimate_up(points: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The up of a scene without cameras: its thinnest principal axis when that is clearly thinnest and
    within 45 degrees of COLMAP's up (-y), else -y itself. (With cameras, the home camera is the first
    training camera, its own up included.)"""
    w = weights / weights.sum()
    mean = w @ points
    cov = (points - mean).T @ ((points - mean) * w[:, None])
    evals, evecs = np.linalg.eigh(cov)           # ascending
    thin = evecs[:, 0] * np.sign(evecs[:, 0] @ COLMAP_UP or 1.0)
    if evals[0] < 0.5 * evals[1] and thin @ COLMAP_UP > math.cos(math.radians(45)):
        return _unit(thin)
    return COLMAP_UP.copy()


def scene_frame(splats: Splats) -> SceneFrame:
    """Robust centre, extent and up of the scene (see the module doc)."""
    means = splats["means"].detach().cpu().double().numpy()
    weights = torch.sigmoid(splats["opacities"].detach().cpu().double()).numpy()
    if means.shape[0] > MAX_POINTS:
        pick = np.random.default_rng(0).choice(means.shape[0], MAX_POINTS, replace=False)
        means, weights = means[pick], weights[pick]
    weights = weights + 1e-6          # an all-transparent scene still has a box
    lo, hi = weighted_quantiles(means, weights, [0.05, 0.95])
    inside = np.all((means >= lo) & (means <= hi), axis=1)
    if inside.sum() < 4:
        inside[:] = True
    return SceneFrame(0.5 * (lo + hi), 0.5 * (hi - lo), estimate_up(means[inside], weights[inside]))


def home_camera(frame: SceneFrame, views: list[CameraView]) -> HomeCamera:
    """The first training camera, exactly (its roll included); without cameras, outside the robust box
    looking at its centre from the photographer's side (COLMAP's +z looks into the scene), slightly above."""
    if views:
        c2w = views[0].camtoworld
        pos, forward = c2w[:3, 3], c2w[:3, 2]
        depth = max(float((frame.centre - pos) @ forward), 0.1 * frame.radius)   # orbit about the scene
        return HomeCamera(pos.copy(), pos + depth * forward, -c2w[:3, 1].copy(), views[0].fov_y)
    up = frame.up
    forward = COLMAP_FORWARD - (COLMAP_FORWARD @ up) * up
    if np.linalg.norm(forward) < 0.1:      # up along z: look along x instead
        forward = np.array([1.0, 0.0, 0.0]) - up[0] * up
    forward = _unit(forward)
    back = -math.cos(HOME_ELEVATION) * forward + math.sin(HOME_ELEVATION) * up
    # the box just fits the view (vertical field of view; the width for a 4:3 page at least): its reach
    # across the view over the tangent of the half angle, plus its reach towards the camera
    cam_up = _unit(up - (up @ back) * back)
    right = np.cross(cam_up, back)
    tan_half = math.tan(0.5 * HOME_FOV)
    distance = frame.reach(back) + max(frame.reach(cam_up) / tan_half, frame.reach(right) / (tan_half * HOME_ASPECT))
    return HomeCamera(frame.centre + distance * back, frame.centre.copy(), up.copy(), HOME_FOV)


def frustum_scale(views: list[CameraView]) -> float:
    """Frustum size in scene units: half the median spacing of neighbouring cameras (the frusta of a dense
    capture do not overlap), at most 5 % of the cameras' extent; 0 for fewer than two cameras."""
    centres = np.array([v.camtoworld[:3, 3] for v in views])
    if len(centres) < 2:
        return 0.0
    sub = centres[:: max(1, len(centres) // 500)]
    d = np.linalg.norm(sub[:, None] - sub[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    extent = float(np.linalg.norm(centres.max(0) - centres.min(0)))
    return min(0.5 * float(np.median(d.min(1))), 0.05 * extent)


def go_home(client, home: HomeCamera, world_scale: float):
    """Puts a page's camera at the home camera (a page that disconnects meanwhile is left alone)."""
    if client is None:
        return
    try:
        with client.atomic():
            client.camera.up_direction = tuple(home.up)
            client.camera.position = tuple(world_scale * home.position)
            client.camera.look_at = tuple(world_scale * home.look_at)
            client.camera.fov = home.fov
    except Exception:
        pass


def set_home(server, home: HomeCamera, world_scale: float):
    """New pages open at the home camera (viser's initial camera); pages already open are moved there."""
    ic = server.initial_camera
    ic.position, ic.look_at = tuple(world_scale * home.position), tuple(world_scale * home.look_at)
    ic.up, ic.fov = tuple(home.up), home.fov
    for client in list(server.get_clients().values()):
        go_home(client, home, world_scale)


class Frusta:
    """The training cameras as frusta in the page; clicking one calls on_click(client, view)."""

    COLOR = (255, 140, 0)

    def __init__(self, scene_api, on_click):
        self._scene_api, self._on_click = scene_api, on_click
        self.handles: list = []
        self.visible = True

    def draw(self, views: list[CameraView], world_scale: float):
        for f in self.handles:
            f.remove()
        self.handles = []
        # one camera: a tenth of the normalised scene radius
        scale = max(frustum_scale(views) * world_scale or 0.1 * VIEWER_RADIUS, 1e-3)
        for i, v in enumerate(views):
            handle = self._scene_api.add_camera_frustum(
                f"/cameras/{i:04d}", fov=v.fov_y, aspect=v.width / v.height, scale=scale, thickness=2.0,
                thickness_units="screen", wxyz=wxyz(v.camtoworld[:3, :3]), position=world_scale * v.camtoworld[:3, 3],
                color=self.COLOR, visible=self.visible)
            handle.on_click(lambda ev, v=v: self._on_click(ev.client, v))
            self.handles.append(handle)

    def set_visible(self, visible: bool):
        self.visible = bool(visible)
        for f in self.handles:
            f.visible = self.visible


def jump_to_view(client, view: CameraView, world_scale: float):
    """Puts a page's camera at a training camera."""
    with client.atomic():
        client.camera.fov = view.fov_y
        client.camera.wxyz = wxyz(view.camtoworld[:3, :3])
        client.camera.position = world_scale * view.camtoworld[:3, 3]
