"""The viewer's camera geometry: the robust scene frame (floaters ignored), the up direction, and the home
camera the page opens at (the first training camera, or outside the scene framing it)."""
from __future__ import annotations

import math

import numpy as np
import torch

from gsplat_kit.scene.splats import Splats
from gsplat_kit.viewer.camera import COLMAP_UP, estimate_up, home_camera, rotmat, scene_frame, wxyz
from gsplat_kit.viewer.render import RenderSettings, SplatRenderer
from gsplat_kit.viewer.synthetic import look_at_view, sphere_splats


def _with_floaters(splats: dict, n: int, seed: int = 0) -> dict:
    """Adds n faint Gaussians scattered far from the scene (what a real capture's floaters look like)."""
    g = torch.Generator().manual_seed(seed)
    far = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * (20 + 30 * torch.rand(n, 1, generator=g))
    extra = {"means": far, "scales": torch.full((n, 3), -3.0), "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
             "opacities": torch.full((n,), -6.0), "sh0": torch.zeros(n, 1, 3), "shN": torch.zeros(n, 0, 3)}
    out = {k: torch.cat([splats[k], extra[k]]) for k in ("means", "scales", "quats", "opacities", "sh0")}
    out["shN"] = torch.zeros(out["means"].shape[0], 0, 3)
    return out


def test_scene_frame_ignores_faint_floaters():
    splats = Splats(_with_floaters(sphere_splats(2000), 400))   # 1/6 of the Gaussians are far floaters
    frame = scene_frame(splats)
    assert np.linalg.norm(frame.centre) < 0.1, frame.centre
    assert 1.0 < frame.radius < 1.8, frame.radius                 # the unit sphere's 5-95 % box
    # the same box without the opacity weights is pulled out by the floaters
    lo, hi = np.percentile(splats["means"].numpy(), [5, 95], axis=0)
    assert 0.5 * np.linalg.norm(hi - lo) > 3 * frame.radius


def test_up_from_principal_axes_or_colmap_convention():
    rng = np.random.default_rng(0)
    # a ground slab whose normal is 20 degrees from -y: the thinnest axis is the up
    tilt = math.radians(20)
    up_true = np.array([math.sin(tilt), -math.cos(tilt), 0.0])
    a = np.cross(up_true, [0, 0, 1.0])
    b = np.cross(up_true, a)
    pts = rng.normal(size=(5000, 1)) * 3 * a + rng.normal(size=(5000, 1)) * 2 * b + rng.normal(size=(5000, 1)) * 0.1 * up_true
    w = np.ones(len(pts))
    assert math.degrees(math.acos(estimate_up(pts, w) @ up_true)) < 2
    # thinnest along x (90 degrees from -y): not trusted, COLMAP's -y instead
    assert np.allclose(estimate_up(pts[:, [1, 0, 2]], w), COLMAP_UP)
    # a round blob: no thin axis, -y
    assert np.allclose(estimate_up(rng.normal(size=(5000, 3)), w), COLMAP_UP)


def test_home_is_the_first_training_camera_exactly():
    views = [look_at_view([0.3, -1.2, -3.0], [0.1, 0, 0], [0.2, -1, 0.1], 200, 150, 47, "a"),
             look_at_view([3.0, -1.0, 0.0], [0, 0, 0], [0, -1, 0], 200, 150, 60, "b")]
    s = Splats(sphere_splats(500))
    home = home_camera(scene_frame(s), views)
    c2w = views[0].camtoworld
    np.testing.assert_allclose(home.position, c2w[:3, 3])
    assert abs(home.fov - views[0].fov_y) < 1e-12
    # the page's camera from (position, look_at, up), as viser builds it: z forward, y = -up made
    # orthogonal to z, x = y x z; it must be the training camera's rotation, roll included
    z = (home.look_at - home.position) / np.linalg.norm(home.look_at - home.position)
    y = -(home.up - (home.up @ z) * z)
    y /= np.linalg.norm(y)
    np.testing.assert_allclose(np.stack([np.cross(y, z), y, z], 1), c2w[:3, :3], atol=1e-9)
    np.testing.assert_allclose(rotmat(wxyz(c2w[:3, :3])), c2w[:3, :3], atol=1e-9)


def test_home_without_cameras_frames_the_scene_from_outside():
    splats = _with_floaters(sphere_splats(3000), 300)
    s = Splats(splats)
    frame = scene_frame(s)
    home = home_camera(frame, [])
    to_centre = frame.centre - home.position
    assert np.linalg.norm(to_centre) > 1.5 * frame.radius                      # outside the scene
    assert np.allclose(home.look_at, frame.centre)
    assert to_centre @ np.array([0, 0, 1.0]) > 0                               # COLMAP: +z looks into the scene
    assert to_centre @ COLMAP_UP < 0                                           # from slightly above
    # the rendered home view: the sphere fills a good part of the frame and is whole (empty border)
    v = look_at_view(home.position, home.look_at, home.up, 160, 120, math.degrees(home.fov))
    r = SplatRenderer("cpu")
    r.set_splats(splats)
    alpha = r.render(v.camtoworld, v.fov_y, 160, 120, RenderSettings(mode="Alpha"))[..., 0]
    covered = (alpha > 128).mean()
    border = np.concatenate([alpha[0], alpha[-1], alpha[:, 0], alpha[:, -1]])
    assert 0.15 < covered < 0.8, covered
    assert (border > 128).mean() < 0.05
