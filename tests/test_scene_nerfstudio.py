"""nerfstudio data: a transforms.json written the way `ns-process-data` writes it (colmap_to_json:
OpenGL poses in a world with axes swapped by `applied_transform`, intrinsics per frame when the model
has several cameras, `ply_file_path` with the SfM points, `mask_path` masks), built here from the
COLMAP scene cup_kwrous. It must load to the COLMAP original's cameras and points, and train to the
same held-out PSNR; masked pixels must not touch the loss or its gradients."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil

import cv2
import numpy as np
import pytest
import torch

from gsplat_kit.scene import load_scene, read_model
from gsplat_kit.scene.colmap import find_model_dir
from gsplat_kit.scene.dataset import undistort_image
from gsplat_kit.scene.images import ImageError
from train_helpers import SynthView, make_scene

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUP = os.path.join(ROOT, "..", "shared", "data", "cup_kwrous")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GSPLAT_KIT_CACHE", str(tmp_path / "cache"))


def need(path):
    if not os.path.isdir(path):
        pytest.skip(f"{path} is not here")


def _camera_params(cam) -> dict:
    """nerfstudio's parse_colmap_camera_params for the pinhole models."""
    p = cam.params
    fx, fy, cx, cy = (p[0], p[0], p[1], p[2]) if cam.model == "SIMPLE_PINHOLE" else p[:4]
    return {"w": cam.width, "h": cam.height, "fl_x": float(fx), "fl_y": float(fy), "cx": float(cx), "cy": float(cy),
            "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0, "camera_model": "OPENCV"}


def colmap_to_nerfstudio(src: str, dst, mask=None, factors=(4,)) -> dict:
    """Writes `dst` as ns-process-data would from the COLMAP scene `src`: images/ (and images_N/),
    transforms.json, sparse_pc.ply, and with `mask` (image index -> [H, W] uint8 array, 255 = keep)
    masks/ + masks_N/."""
    model = read_model(find_model_dir(src))
    shutil.copytree(os.path.join(src, "images"), dst / "images")
    for f in factors:
        if os.path.isdir(os.path.join(src, f"images_{f}")):
            shutil.copytree(os.path.join(src, f"images_{f}"), dst / f"images_{f}")
    applied = np.eye(4)[:3, :][np.array([0, 2, 1]), :]
    applied[2, :] *= -1
    frames = []
    for index, (iid, im) in enumerate(model.images.items()):
        c2w = np.linalg.inv(im.world_to_camera())
        c2w[0:3, 1:3] *= -1
        c2w = c2w[np.array([0, 2, 1, 3]), :]
        c2w[2, :] *= -1
        frame = {"file_path": f"images/{im.name}", "transform_matrix": c2w.tolist(), "colmap_im_id": iid}
        if len(model.cameras) > 1:
            frame.update(_camera_params(model.cameras[im.camera_id]))
        if mask is not None:
            frame["mask_path"] = f"masks/{os.path.splitext(im.name)[0]}.png"
            full = mask(index)
            scaled = [(f"masks_{f}", cv2.resize(full, (full.shape[1] // f, full.shape[0] // f),
                                                interpolation=cv2.INTER_NEAREST)) for f in factors]
            for folder, m in [("masks", full)] + scaled:
                (dst / folder).mkdir(exist_ok=True)
                cv2.imwrite(str(dst / folder / os.path.basename(frame["mask_path"])), m)
        frames.append(frame)
    out = {} if len(model.cameras) > 1 else _camera_params(next(iter(model.cameras.values())))
    out.update(frames=frames, applied_transform=applied.tolist(), ply_file_path="sparse_pc.ply")
    xyz = model.points.xyz @ applied[:3, :3].T + applied[:3, 3]
    rows = [f"{x!r} {y!r} {z!r} {r} {g} {b}" for (x, y, z), (r, g, b) in zip(xyz.tolist(), model.points.rgb.tolist())]
    header = ["ply", "format ascii 1.0", f"element vertex {len(rows)}", "property float x", "property float y",
              "property float z", "property uint8 red", "property uint8 green", "property uint8 blue", "end_header"]
    (dst / "sparse_pc.ply").write_text("\n".join(header + rows) + "\n")
    (dst / "transforms.json").write_text(json.dumps(out, indent=4))
    return out


def _transient_mask(index: int, w=800, h=600) -> np.ndarray:
    """Leaves out a 20 % x 20 % box at a place that changes from image to image (as a passer-by would
    be masked), so every part of the scene stays seen by most views."""
    rng = np.random.default_rng(index)
    m = np.full((h, w), 255, np.uint8)
    x, y = int(rng.integers(0, w - w // 5)), int(rng.integers(0, h - h // 5))
    m[y:y + h // 5, x:x + w // 5] = 0
    return m


@pytest.fixture(scope="module")
def ns_cup(tmp_path_factory):
    need(CUP)
    dst = tmp_path_factory.mktemp("ns_cup")
    colmap_to_nerfstudio(CUP, dst, mask=_transient_mask)
    return dst


def test_nerfstudio_scene_loads_to_the_colmap_cameras_and_points(ns_cup, tmp_path):
    colmap = load_scene(CUP, data_factor=4)
    ns = load_scene(str(ns_cup), data_factor=4)
    assert [v.name for v in ns.views] == [f"images/{v.name}" for v in colmap.views]
    assert [v.name for v in ns.test_views] == [f"images/{v.name}" for v in colmap.test_views]
    for a, b in zip(colmap.views, ns.views):
        assert (a.width, a.height) == (b.width, b.height) == (200, 150)
        assert os.path.dirname(b.image_path).endswith("images_4")
        assert torch.allclose(a.K, b.K, rtol=1e-6)
        assert torch.allclose(a.viewmat, b.viewmat, atol=1e-5)  # applied_transform undone
        assert b.distortion is None and b.mask_path and os.path.dirname(b.mask_path).endswith("masks_4")
    assert torch.allclose(colmap.points, ns.points, atol=1e-5) and torch.equal(colmap.points_rgb, ns.points_rgb)
    assert ns.scene_scale == pytest.approx(colmap.scene_scale, rel=1e-5)
    v = ns.views[0]
    assert torch.equal(v.load_image(), colmap.views[0].load_image())
    full = cv2.imread(str(ns_cup / "masks" / os.path.basename(v.mask_path)), cv2.IMREAD_GRAYSCALE)
    m = v.load_mask()
    assert m.shape == (150, 200) and float(m.min()) == 0.0 and float(m.max()) == 1.0
    assert torch.equal(m, torch.from_numpy(cv2.imread(v.mask_path, cv2.IMREAD_GRAYSCALE) / 255.0).float())
    # without masks_4/ the full-size mask is area-downscaled to the view (and cached)
    shutil.move(ns_cup / "masks_4", tmp_path / "masks_4")
    try:
        m2 = load_scene(str(ns_cup), data_factor=4).views[0].load_mask()
    finally:
        shutil.move(tmp_path / "masks_4", ns_cup / "masks_4")
    area = cv2.resize(full, (200, 150), interpolation=cv2.INTER_AREA) / 255.0
    assert torch.allclose(m2, torch.from_numpy(area).float(), atol=0.5 / 255 + 1e-6)  # OpenCV rounds to uint8
    assert 0 < int(((m2 > 0) & (m2 < 1)).sum()) < 200  # the box edges are fractional: area-averaged


def test_global_intrinsics_pinhole_and_fisheye_models(tmp_path):
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), np.zeros((60, 80, 3), np.uint8))
    pose = np.eye(4).tolist()
    meta = {"fl_x": 70.0, "fl_y": 72.0, "cx": 41.0, "cy": 29.0, "w": 80, "h": 60, "k1": 0.1, "k2": 0.01,
            "camera_model": "PINHOLE", "frames": [{"file_path": "images/a.png", "transform_matrix": pose}]}
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    v = load_scene(str(tmp_path), test_every=0).views[0]
    assert v.distortion is None and torch.allclose(v.K, torch.tensor([[70.0, 0, 41], [0, 72, 29], [0, 0, 1]]))
    meta.update(camera_model="OPENCV_FISHEYE", k3=0.001, k4=-0.002)
    meta["frames"][0]["fl_x"] = 65.0  # a frame's own value wins over the global one
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    v = load_scene(str(tmp_path), test_every=0).views[0]
    assert v.fisheye and v.distortion == pytest.approx((0.1, 0.01, 0.001, -0.002)) and float(v.K[0, 0]) == 65.0
    assert v.load_image().shape == (60, 80, 3)


def test_fisheye_undistortion_brings_a_dot_back():
    """A dot drawn where the equidistant fisheye model puts a pixel comes back to that pixel."""
    H, W, f = 120, 160, 90.0
    K = torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]])
    dist = (-0.05, 0.01, 0.0, 0.0)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    for i, j in [(20, 15), (140, 100), (80, 60)]:
        x, y = (i + 0.5 - W / 2) / f, (j + 0.5 - H / 2) / f
        r = math.hypot(x, y)
        th = math.atan(r)
        thd = th * (1 + dist[0] * th ** 2 + dist[1] * th ** 4)
        s = thd / r if r > 0 else 1.0
        ud, vd = x * s * f + W / 2 - 0.5, y * s * f + H / 2 - 0.5
        blob = torch.exp(-((xs - ud) ** 2 + (ys - vd) ** 2) / (2 * 1.2 ** 2)).float()
        out = undistort_image(blob[..., None].expand(H, W, 3).contiguous(), K, dist, fisheye=True)[..., 0].double()
        w = out / out.sum()
        assert abs(float((w * xs).sum()) - i) < 0.25 and abs(float((w * ys).sum()) - j) < 0.25
        if (i, j) != (80, 60):
            assert math.hypot(ud - i, vd - j) > 1.5  # the distortion moved it
    img = (xs / W).float()[..., None].expand(H, W, 3).contiguous()
    # zero coefficients leave only the equidistant projection, atan(r) / r: the centre moves by < 0.2 px
    out = undistort_image(img, K, (0.0,) * 4, fisheye=True)
    assert torch.allclose(out[50:70, 70:90], img[50:70, 70:90], atol=0.2 / W)
    assert not torch.allclose(out[:, :10], img[:, :10], atol=1 / W)  # but the rim moves in by pixels


def test_mask_of_another_aspect_is_refused(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), np.zeros((60, 80, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "masks" / "a.png"), np.zeros((80, 80), np.uint8))
    (tmp_path / "transforms.json").write_text(json.dumps({"fl_x": 70.0, "frames": [
        {"file_path": "images/a.png", "mask_path": "masks/a.png", "transform_matrix": np.eye(4).tolist()}]}))
    with pytest.raises(ImageError, match=r"masks/a\.png.*80x80.*aspect"):
        load_scene(str(tmp_path))


# ---- training ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class _MaskedView(SynthView):
    """A synthetic view with a mask (train_helpers' views have none)."""
    mask: torch.Tensor = None
    mask_path: str = "in memory"

    def load_mask(self):
        return self.mask


def _one_step(tmp_path, name, scene):
    from gsplat_kit.train.config import TrainConfig
    from gsplat_kit.train.trainer import Trainer

    cfg = TrainConfig(out=str(tmp_path / name), steps=3, ckpt_every=0, eval=False, progress=False,
                      random_background=False)
    tr = Trainer(cfg, scene=scene)
    tr.train_steps()
    return {k: v.detach().clone() for k, v in tr.splats.items()}


def test_masked_pixels_do_not_touch_the_loss_or_gradients(tmp_path):
    base = make_scene(n_views=6, n_gauss=200, width=48, height=40, test_every=0)
    mask = torch.ones(40, 48)
    mask[:, :20] = 0  # the left 20 columns do not count
    g = torch.Generator().manual_seed(3)

    def scene_with(noise_in_mask: bool, masked: bool = True):
        views = []
        for v in base.train_views:
            img = v.image.clone()
            if noise_in_mask:
                img[:, :20] = torch.rand(40, 20, 3, generator=g)
            views.append(_MaskedView(v.name, v.width, v.height, v.K, v.viewmat, img,
                                     mask if masked else torch.ones(40, 48)))
        return dataclasses.replace(base, train_views=views)

    clean = _one_step(tmp_path, "clean", scene_with(False))
    noisy = _one_step(tmp_path, "noisy", scene_with(True))
    for k in clean:
        assert torch.equal(clean[k], noisy[k]), f"{k}: a masked pixel changed the update"
    # the check has teeth: without the mask the same noise changes the update
    unmasked_clean = _one_step(tmp_path, "uc", scene_with(False, masked=False))
    unmasked_noisy = _one_step(tmp_path, "un", scene_with(True, masked=False))
    assert not torch.equal(unmasked_clean["means"], unmasked_noisy["means"])


def _train_psnr(tmp_path, name, data, steps):
    from gsplat_kit.train.config import TrainConfig
    from gsplat_kit.train.trainer import Trainer

    cfg = TrainConfig(data=data, data_factor=4, out=str(tmp_path / name), steps=steps, ckpt_every=0, eval=True,
                      progress=False,
                      strategy_options=dict(refine_start_iter=100, refine_every=50))
    return Trainer(cfg).train()


def test_nerfstudio_scene_trains_like_the_colmap_original(ns_cup, tmp_path):
    """Equal steps and seed on cup_kwrous at 200x150: the held-out PSNR of the nerfstudio copy (with a
    mask over 4 % of each image, somewhere else in each) is within 0.3 dB of the COLMAP original's.
    Measured (2 busy cores): 21.56 dB both without masks (the same figure to the last digit: the reader
    reproduces cameras, images and points), 21.45 dB with them; ~45 s per run."""
    steps = 200
    colmap = _train_psnr(tmp_path, "colmap", CUP, steps)
    ns = _train_psnr(tmp_path, "ns", str(ns_cup), steps)
    assert colmap["num_test_views"] == ns["num_test_views"] == 10
    assert colmap["psnr"] > 18.0, colmap["psnr"]  # it did learn (the SfM initialisation scores ~11 dB)
    assert abs(ns["psnr"] - colmap["psnr"]) <= 0.3, (ns["psnr"], colmap["psnr"])
