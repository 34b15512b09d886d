"""load_scene on real data: NeRF-synthetic lego (Blender convention, RGBA), instant-ngp fox (OPENCV
distortion), COLMAP cup (images_N and resize-once caching), a distorted COLMAP model (pycolmap
undistortion), and the every-8th held-out split."""
from __future__ import annotations

import json
import math
import os
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from gsplat_kit.scene import ColmapError, load_scene
from gsplat_kit.scene.colmap import Camera, Image as ColmapImage, Model, Points3D, write_model
from gsplat_kit.scene.dataset import undistort_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data")
LEGO = os.path.join(DATA, "nerf_synthetic_lego")
FOX = os.path.join(DATA, "instant_ngp_fox")
CUP = os.path.join(DATA, "cup_kwrous")
DEMO = os.path.join(ROOT, "data", "demo_scene")


def need(path):
    if not os.path.isdir(path):
        pytest.skip(f"{path} is not here")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GSPLAT_KIT_CACHE", str(tmp_path / "cache"))


def _project(view, X):
    p = view.viewmat.double() @ torch.tensor([*X, 1.0], dtype=torch.float64)
    uvw = view.K.double() @ p[:3]
    return float(uvw[0] / uvw[2]), float(uvw[1] / uvw[2]), float(p[2])


def test_lego_blender_to_opencv_and_lazy_images():
    need(LEGO)
    scene = load_scene(LEGO, data_factor=8, white_background=True)
    views = scene.views
    assert len(views) == 100 and all(v._image is None for v in views)  # nothing decoded yet
    assert (views[0].width, views[0].height) == (100, 100)
    f = 0.5 * 800 / math.tan(0.5 * 0.6911112070083618)
    assert float(views[0].K[0, 0]) == pytest.approx(f / 8, rel=1e-4)
    for v in views:
        # the origin (the lego model's centre) is in front of every camera and projects near the
        # image centre; with the Blender axes left unflipped it would be behind the camera (z < 0)
        u, w, z = _project(v, (0.0, 0.0, 0.0))
        assert z > 0 and 0.25 * v.width < u < 0.75 * v.width and 0.25 * v.height < w < 0.75 * v.height
    # and the object really is there: alpha is non-zero at the projected centre of the full-size RGBA
    for v in views[:5]:
        with Image.open(v.image_path) as im:
            alpha = np.asarray(im)[..., 3]
        u, w, _ = _project(v, (0.0, 0.0, 0.0))
        assert alpha[int(w * 8), int(u * 8)] > 0
    img = views[3].load_image()
    assert img.shape == (100, 100, 3) and views[3]._image is not None
    assert torch.allclose(img[0, 0], torch.ones(3))  # transparent corner composited on white
    black = load_scene(LEGO, data_factor=8).views[3].load_image()
    assert torch.allclose(black[0, 0], torch.zeros(3))
    assert scene.points.shape == (100_000, 3) and scene.scene_scale > 3


def test_every_8th_image_is_held_out():
    need(LEGO)
    scene = load_scene(LEGO, data_factor=8)
    names = [v.name for v in scene.views]
    assert names == sorted(names)
    assert [v.name for v in scene.test_views] == names[::8] and len(scene.test_views) == 13
    assert len(scene.train_views) == 87 and not set(v.name for v in scene.train_views) & set(names[::8])
    assert len(load_scene(LEGO, data_factor=8, test_every=10).test_views) == 10
    assert len(load_scene(LEGO, data_factor=8, test_every=0).test_views) == 0


def test_undistort_with_zero_coefficients_is_identity():
    img = torch.rand(37, 53, 3)
    K = torch.tensor([[40.0, 0, 26.0], [0, 41.0, 18.0], [0, 0, 1]])
    assert torch.allclose(undistort_image(img, K, (0.0, 0.0, 0.0, 0.0)), img, atol=1e-5)


def test_fox_distortion_is_undone():
    """A dot drawn where the fox camera's distortion puts a pixel comes back to that pixel."""
    need(FOX)
    scene = load_scene(FOX, data_factor=8)
    with open(os.path.join(FOX, "transforms.json")) as fh:
        meta = json.load(fh)
    dist = tuple(meta[k] for k in ("k1", "k2", "p1", "p2"))
    assert len(scene.views) == 67 and all(v.distortion == pytest.approx(dist) for v in scene.views)
    assert (scene.views[0].width, scene.views[0].height) == (135, 240)
    assert float(scene.views[0].K[0, 0]) == pytest.approx(1375.52 * 135 / 1080, rel=1e-4)
    img = scene.views[0].load_image()
    assert img.shape == (240, 135, 3) and torch.isfinite(img).all()
    v = load_scene(FOX, data_factor=2).views[0]  # at 540x960 the distortion moves corners by pixels
    fx, fy, cx, cy = float(v.K[0, 0]), float(v.K[1, 1]), float(v.K[0, 2]), float(v.K[1, 2])
    k1, k2, p1, p2 = dist
    H, W = v.height, v.width
    for i, j in [(12, 14), (525, 945), (40, 900), (270, 480)]:  # corners move most, the centre barely
        x, y = (i + 0.5 - cx) / fx, (j + 0.5 - cy) / fy  # pixel centres at +0.5, as the loader
        r2 = x * x + y * y
        rad = 1 + k1 * r2 + k2 * r2 * r2
        ud = (x * rad + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)) * fx + cx - 0.5
        vd = (y * rad + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y) * fy + cy - 0.5
        ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
        blob = torch.exp(-((xs - ud) ** 2 + (ys - vd) ** 2) / (2 * 1.2 ** 2)).float()
        out = undistort_image(blob[..., None].expand(H, W, 3).contiguous(), v.K, dist)[..., 0].double()
        w = out / out.sum()
        ci, cj = float((w * xs).sum()), float((w * ys).sum())
        assert abs(ci - i) < 0.25 and abs(cj - j) < 0.25, ((i, j), (ci, cj), (ud, vd))
        if (i, j) != (270, 480):
            assert math.hypot(ud - i, vd - j) > 2  # the check has teeth: distortion moved it (2.4-5 px)


def test_colmap_images_n_and_resize_cache(tmp_path):
    need(CUP)
    full = load_scene(CUP)
    quarter = load_scene(CUP, data_factor=4)
    v1, v4 = full.views[0], quarter.views[0]
    assert (v4.width, v4.height) == (200, 150) and os.path.dirname(v4.image_path).endswith("images_4")
    assert torch.allclose(v4.K[:2], v1.K[:2] / 4, rtol=1e-5)
    assert torch.equal(v4.viewmat, v1.viewmat)
    assert v4.load_image().shape == (150, 200, 3)
    half = load_scene(CUP, data_factor=2).views[0]  # no images_2: resized once, then read from the cache
    assert half.load_image().shape == (300, 400, 3)
    assert len(os.listdir(tmp_path / "cache" / "resized")) == 1
    assert len(full.test_views) == len(range(0, 77, 8)) and full.points.shape[0] == 9262


def test_distorted_colmap_model_is_undistorted_with_pycolmap(tmp_path):
    """The demo photos under an OPENCV camera with distortion: load_scene hands out PINHOLE views."""
    with open(os.path.join(DEMO, "cameras_gt.json")) as fh:
        gt = json.load(fh)
    root = tmp_path / "distorted"
    shutil.copytree(os.path.join(DEMO, "images"), root / "images")
    K = np.array(gt["K"])
    cams = {1: Camera(1, "OPENCV", gt["width"], gt["height"],
                      np.array([K[0, 0], K[1, 1], K[0, 2], K[1, 2], -0.08, 0.01, 0.0, 0.0]))}
    images = {}
    for i, fr in enumerate(gt["frames"][:6], 1):
        w2c = np.array(fr["world_to_camera"])
        images[i] = ColmapImage(i, _rot_to_quat(w2c[:3, :3]), w2c[:3, 3], 1, os.path.basename(fr["file"]))
    rng = np.random.default_rng(0)
    pts = Points3D(np.arange(1, 51), rng.normal(scale=0.3, size=(50, 3)), rng.integers(0, 255, (50, 3)).astype(np.uint8),
                   np.zeros(50))
    write_model(Model(cams, images, pts), str(root / "sparse" / "0"))
    with pytest.raises(ColmapError, match="distorted"):
        load_scene(str(root), undistort=False)
    scene = load_scene(str(root), test_every=0)
    assert len(scene.views) == 6 and scene.points.shape == (50, 3)
    v = scene.views[0]
    assert "undistorted" in v.image_path
    img = v.load_image()
    assert img.shape == (v.height, v.width, 3)
    # the undistorted camera keeps the pose; only the intrinsics/crop change
    assert torch.allclose(v.viewmat[:3, :3], torch.tensor(np.array(gt["frames"][0]["world_to_camera"])[:3, :3],
                                                          dtype=torch.float32), atol=1e-5)


def test_transforms_frame_missing_on_disk_names_it(tmp_path):
    (tmp_path / "transforms.json").write_text(json.dumps({
        "fl_x": 100.0, "w": 64, "h": 48,
        "frames": [{"file_path": "images/gone.png", "transform_matrix": np.eye(4).tolist()}]}))
    with pytest.raises(FileNotFoundError, match="gone.png"):
        load_scene(str(tmp_path))


def _rot_to_quat(R):
    w = math.sqrt(max(1e-12, 1 + R[0, 0] + R[1, 1] + R[2, 2])) / 2
    return np.array([w, (R[2, 1] - R[1, 2]) / (4 * w), (R[0, 2] - R[2, 0]) / (4 * w), (R[1, 0] - R[0, 1]) / (4 * w)])


@pytest.mark.parametrize("meta, msg", [
    ({"w": 64, "h": 48, "frames": [{"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}]}, "no focal length"),
    ({"fl_x": 50.0, "frames": [{"file_path": "a.png", "transform_matrix": [[1, 0], [0, 1]]}]}, "4x4"),
    ({"fl_x": 50.0, "frames": [{"file_path": "a.png"}]}, "transform_matrix"),
    ({"fl_x": 50.0, "frames": []}, "no 'frames'"),
])
def test_malformed_transforms_name_the_file(tmp_path, meta, msg):
    Image.new("RGB", (64, 48)).save(tmp_path / "a.png")
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=msg) as e:
        load_scene(str(tmp_path))
    assert "transforms.json" in str(e.value)


# ---- images: OpenCV reading, sizes against cameras ---------------------------------------------------

def _tiny_colmap(root, cam_size=(80, 60), image_sizes=((80, 60),) * 3, folder="images"):
    """A COLMAP scene with one PINHOLE camera and one image per entry of image_sizes (PNG, gradients)."""
    (root / folder).mkdir(parents=True, exist_ok=True)
    w, h = cam_size
    cams = {1: Camera(1, "PINHOLE", w, h, np.array([70.0, 70.0, w / 2, h / 2]))}
    images = {}
    for i, (iw, ih) in enumerate(image_sizes, 1):
        img = np.zeros((ih, iw, 3), np.uint8)
        img[..., 0] = np.linspace(0, 255, iw)[None]
        img[..., 1] = np.linspace(0, 255, ih)[:, None]
        Image.fromarray(img).save(root / folder / f"im{i}.png")
        images[i] = ColmapImage(i, np.array([1.0, 0, 0, 0]), np.array([0.1 * i, 0, 3.0]), 1, f"im{i}.png")
    pts = Points3D(np.arange(1, 11), np.random.default_rng(0).normal(size=(10, 3)), np.full((10, 3), 128, np.uint8),
                   np.zeros(10))
    write_model(Model(cams, images, pts), str(root / "sparse" / "0"))


def test_exif_orientation_is_honoured(tmp_path):
    from gsplat_kit.scene.images import image_size, read_image

    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :10] = 255  # a white band on the left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(stored).save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    assert image_size(str(tmp_path / "rot.jpg")) == (20, 40)
    img = read_image(str(tmp_path / "rot.jpg"))
    assert img.shape == (40, 20, 3)
    assert img[:8].mean() > 200 and img[12:].mean() < 40  # the left band is on top once displayed


def test_grey_16_bit_and_alpha_images(tmp_path):
    import cv2

    from gsplat_kit.scene.images import read_image, read_mask, to_float_rgb

    grey16 = (np.arange(12 * 10).reshape(10, 12) * 500).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "g.png"), grey16)
    img = read_image(str(tmp_path / "g.png"))
    assert img.dtype == np.uint16 and img.shape == (10, 12, 3) and np.array_equal(img[..., 1], grey16)
    assert np.allclose(to_float_rgb(img)[..., 0], grey16 / 65535.0)
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # red, fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert np.allclose(to_float_rgb(read_image(str(tmp_path / "a.png")), background=(0.0, 1.0, 0.0)), [0, 1, 0])
    assert read_mask(str(tmp_path / "a.png")).max() == 0.0  # an RGBA mask counts by its alpha


def test_image_of_the_cameras_aspect_is_resized_with_a_warning(tmp_path):
    _tiny_colmap(tmp_path, image_sizes=((80, 60), (40, 30), (80, 60)))
    with pytest.warns(UserWarning, match=r"1 image\(s\) differ.*im2\.png: 40x30, camera 80x60"):
        scene = load_scene(str(tmp_path), test_every=0)
    v = next(v for v in scene.views if v.name == "im2.png")
    assert (v.width, v.height) == (80, 60) and v.load_image().shape == (60, 80, 3)


def test_image_of_another_aspect_is_refused(tmp_path):
    from gsplat_kit.scene.images import ImageError

    _tiny_colmap(tmp_path, image_sizes=((80, 60), (80, 80)))
    with pytest.raises(ImageError, match=r"im2\.png: the image is 80x80 but its camera is 80x60.*aspect"):
        load_scene(str(tmp_path))


def test_images_n_rounding_is_accepted_without_a_warning(tmp_path, recwarn):
    _tiny_colmap(tmp_path, cam_size=(81, 61), image_sizes=((81, 61),) * 2)
    _tiny_colmap(tmp_path, cam_size=(81, 61), image_sizes=((41, 31),) * 2, folder="images_2")  # ceil, not floor
    v = load_scene(str(tmp_path), data_factor=2, test_every=0).views[0]
    assert (v.width, v.height) == (41, 31) and "images_2" in v.image_path
    assert float(v.K[0, 0]) == pytest.approx(70.0 * 41 / 81)
    assert not [w for w in recwarn if "differ in size" in str(w.message)]


def test_a_corrupt_photo_is_one_error_naming_it(tmp_path):
    from gsplat_kit.scene.images import ImageError

    _tiny_colmap(tmp_path)
    data = (tmp_path / "images" / "im2.png").read_bytes()
    (tmp_path / "images" / "im2.png").write_bytes(data[: len(data) // 2])  # the header survives, the pixels not
    scene = load_scene(str(tmp_path), test_every=0)
    with pytest.raises(ImageError, match=r"im2\.png: not decodable"):
        [v.load_image() for v in scene.views]
    (tmp_path / "images" / "im3.png").write_bytes(b"GIF89a" + bytes(10))  # not even a header
    with pytest.raises(ImageError, match=r"im3\.png: not a readable image"):
        load_scene(str(tmp_path))


def test_colmap_model_of_the_stored_pixels_keeps_them(tmp_path):
    """A photo with an EXIF rotation whose COLMAP camera has the stored (unrotated) size: COLMAP saw the
    stored pixels, so they are what the view gets; where the camera has the rotated size, it is rotated."""
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :10] = 255
    for root, cam_size in ((tmp_path / "stored", (40, 20)), (tmp_path / "rotated", (20, 40))):
        _tiny_colmap(root, cam_size=cam_size, image_sizes=(cam_size,) * 2)
        for i in (1, 2):  # JPEG bytes under the names the model lists
            Image.fromarray(stored).save(root / "images" / f"im{i}.png", format="JPEG", exif=exif.tobytes(), quality=95)
    img = load_scene(str(tmp_path / "stored"), test_every=0).views[0].load_image()
    assert img.shape == (20, 40, 3) and float(img[:, :8].mean()) > 0.8  # as stored: the band on the left
    img = load_scene(str(tmp_path / "rotated"), test_every=0).views[0].load_image()
    assert img.shape == (40, 20, 3) and float(img[:8].mean()) > 0.8  # as displayed: the band on top


def test_cli_reports_bad_scenes_in_one_line(tmp_path, capsys):
    """Reader errors reach the user through the CLI's one handler: one line naming the file, exit 2."""
    import struct

    from gsplat_kit.cli import main

    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "transforms.json").write_text('[{"frames": []}]')
    _tiny_colmap(tmp_path / "nan")
    cams = tmp_path / "nan" / "sparse" / "0" / "cameras.bin"
    data = bytearray(cams.read_bytes())
    struct.pack_into("<d", data, 8 + 24, float("nan"))
    cams.write_bytes(bytes(data))
    for scene, expected in (("list", r"transforms\.json: the top level is a JSON list"),
                            ("nan", r"cameras\.bin: camera 1 \(PINHOLE\) has non-finite parameters \[nan")):
        assert main(["train", "--data", str(tmp_path / scene), "--out", str(tmp_path / f"out_{scene}"),
                     "--steps", "1", "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
        assert re.search(expected, err), err
