"""COLMAP models: bin and txt readers agree (against pycolmap's own text writer), our writers round-trip
exactly and pycolmap reads what they write, every camera model survives, and lying models fail with an
error naming the file."""
import os
import shutil

import numpy as np
import pytest

from gsplat_kit.scene import ColmapError, load_scene, read_model, write_model
from gsplat_kit.scene.colmap import CAMERA_MODELS, Camera, Image, Model, Points3D

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
if not os.path.isdir(DATA):
    DATA = "/work/shared/data"
SCENES = ["cup_kwrous", "statue_bartoszek"]


def _need(name):
    p = os.path.join(DATA, name)
    if not os.path.isdir(p):
        pytest.skip(f"{p} not present")
    return p


def assert_models_equal(a: Model, b: Model, exact=True):
    close = (lambda x, y: np.array_equal(x, y)) if exact else (lambda x, y: np.allclose(x, y, rtol=1e-12, atol=1e-12))
    assert a.cameras.keys() == b.cameras.keys()
    for k, c in a.cameras.items():
        d = b.cameras[k]
        assert (c.model, c.width, c.height) == (d.model, d.width, d.height)
        assert close(c.params, d.params)
    assert a.images.keys() == b.images.keys()
    for k, im in a.images.items():
        jm = b.images[k]
        assert (im.name, im.camera_id) == (jm.name, jm.camera_id)
        assert close(im.qvec, jm.qvec) and close(im.tvec, jm.tvec)
        assert close(im.xys, jm.xys) and np.array_equal(im.point3D_ids, jm.point3D_ids)
    # writers may order points (and track entries) differently: compare by point id
    oa, ob = np.argsort(a.points.ids), np.argsort(b.points.ids)
    assert np.array_equal(a.points.ids[oa], b.points.ids[ob])
    assert close(a.points.xyz[oa], b.points.xyz[ob]) and close(a.points.errors[oa], b.points.errors[ob])
    assert np.array_equal(a.points.rgb[oa], b.points.rgb[ob])
    srt = lambda t: t[np.lexsort(t.T[::-1])] if len(t) else t
    assert all(np.array_equal(srt(a.points.tracks[i]), srt(b.points.tracks[j])) for i, j in zip(oa, ob))


@pytest.mark.parametrize("scene", SCENES)
def test_bin_and_txt_readers_agree(scene, tmp_path):
    """The text form is written by pycolmap (an independent writer), then both our readers must agree."""
    pycolmap = pytest.importorskip("pycolmap")
    src = os.path.join(_need(scene), "sparse", "0")
    pycolmap.Reconstruction(src).write_text(str(tmp_path))
    a, b = read_model(src), read_model(str(tmp_path))
    assert len(a.images) > 10 and len(a.points) > 1000
    assert_models_equal(a, b, exact=False)  # pycolmap prints 17 significant digits: equal to ~1 ulp
    # and the text file's point tracks and 2D observations are the same as the binary's, with no loss
    assert sum(len(t) for t in a.points.tracks) == sum(len(t) for t in b.points.tracks) > 0


@pytest.mark.parametrize("ext", [".bin", ".txt"])
def test_write_read_round_trip_is_exact_and_pycolmap_reads_it(ext, tmp_path):
    pycolmap = pytest.importorskip("pycolmap")
    src = os.path.join(_need("statue_bartoszek"), "sparse", "0")
    a = read_model(src)
    write_model(a, str(tmp_path), ext)
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]  # atomic writes leave no temp files
    b = read_model(str(tmp_path))
    assert_models_equal(a, b, exact=True)
    rec = pycolmap.Reconstruction(str(tmp_path))
    assert rec.num_images() == len(a.images) and rec.num_points3D() == len(a.points)
    ref = pycolmap.Reconstruction(src)
    assert abs(rec.compute_mean_reprojection_error() - ref.compute_mean_reprojection_error()) < 1e-9
    for iid, im in a.images.items():
        np.testing.assert_allclose(rec.images[iid].cam_from_world().matrix(), im.world_to_camera()[:3], atol=1e-12)


def _all_models_model():
    rng = np.random.default_rng(0)
    cams = {}
    for mid, (name, n) in CAMERA_MODELS.items():
        cams[mid + 1] = Camera(mid + 1, name, 640 + mid, 480 - mid, rng.normal(size=n) * 0.01 + 300.0)
    images = {}
    for i in range(1, len(cams) + 1):
        q = rng.normal(size=4)
        images[i] = Image(i, q / np.linalg.norm(q), rng.normal(size=3), i, f"img {i:02d}.png",
                          rng.random((3, 2)) * 100, np.array([1, -1, 2], np.int64))
    pts = Points3D(np.array([1, 2], np.int64), rng.normal(size=(2, 3)), np.array([[1, 2, 3], [250, 0, 9]], np.uint8),
                   np.array([0.5, 1.5]), [np.array([[1, 0]]), np.array([[2, 2], [3, 0]])])
    return Model(cams, images, pts)


@pytest.mark.parametrize("ext", [".bin", ".txt"])
def test_every_camera_model_round_trips(ext, tmp_path):
    m = _all_models_model()
    assert {c.model for c in m.cameras.values()} >= {
        "SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "OPENCV_FISHEYE", "FULL_OPENCV", "FOV",
        "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE", "THIN_PRISM_FISHEYE"}
    write_model(m, str(tmp_path), ext)
    assert_models_equal(m, read_model(str(tmp_path)), exact=True)


def test_camera_model_table_matches_pycolmap():
    pycolmap = pytest.importorskip("pycolmap")
    for mid, (name, n) in CAMERA_MODELS.items():
        c = pycolmap.Camera.create_from_model_name(1, name, 100.0, 100, 80)
        assert int(c.model) == mid and len(c.params) == n, name
        if name != "EQUIRECTANGULAR":
            ours = Camera(1, name, 100, 80, np.asarray(c.params)).intrinsics()
            assert np.allclose(ours, (c.focal_length_x, c.focal_length_y, c.principal_point_x, c.principal_point_y))


# ---- models that lie -------------------------------------------------------------------------------

def _small_scene(tmp_path, ext=".bin"):
    """A copy of statue_bartoszek's model (images linked, not copied) that the test may then corrupt."""
    src = _need("statue_bartoszek")
    root = tmp_path / "scene"
    (root / "sparse" / "0").mkdir(parents=True)
    os.symlink(os.path.join(src, "images"), root / "images")
    write_model(read_model(os.path.join(src, "sparse", "0")), str(root / "sparse" / "0"), ext)
    return root, root / "sparse" / "0"


@pytest.mark.parametrize("which", ["cameras", "images", "points3D"])
def test_truncated_binary_names_the_file(which, tmp_path):
    root, model = _small_scene(tmp_path)
    f = model / f"{which}.bin"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ColmapError, match=rf"{which}\.bin.*truncated"):
        read_model(str(model))
    with pytest.raises(ColmapError, match=rf"{which}\.bin"):
        load_scene(str(root))


def test_trailing_garbage_is_an_error(tmp_path):
    _, model = _small_scene(tmp_path)
    with open(model / "cameras.bin", "ab") as fh:
        fh.write(b"\x01\x02\x03")
    with pytest.raises(ColmapError, match=r"cameras\.bin.*left over"):
        read_model(str(model))


@pytest.mark.parametrize("ext", [".bin", ".txt"])
def test_unknown_camera_id_names_the_file(ext, tmp_path):
    root, model = _small_scene(tmp_path, ext)
    m = read_model(str(model))
    first = min(m.images)
    m.images[first].camera_id = 999
    write_model(m, str(model), ext)
    with pytest.raises(ColmapError, match=rf"images{ext}.*camera id 999.*cameras{ext}"):
        load_scene(str(root))


def test_image_missing_on_disk_names_the_file(tmp_path):
    src = _need("statue_bartoszek")
    root, model = _small_scene(tmp_path)
    os.unlink(root / "images")
    (root / "images").mkdir()
    names = sorted(os.listdir(os.path.join(src, "images")))
    for n in names[1:]:
        os.symlink(os.path.join(src, "images", n), root / "images" / n)
    with pytest.raises(FileNotFoundError, match=rf"{names[0]}.*missing on disk"):
        load_scene(str(root))


@pytest.mark.parametrize("ext", [".bin", ".txt"])
def test_zero_points_names_the_file(ext, tmp_path):
    root, model = _small_scene(tmp_path, ext)
    m = read_model(str(model))
    m.points = Points3D(np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((0, 3), np.uint8), np.zeros(0), [])
    for im in m.images.values():
        im.point3D_ids = np.full_like(im.point3D_ids, -1)
    write_model(m, str(model), ext)
    with pytest.raises(ColmapError, match=rf"points3D{ext}.*zero 3D points"):
        load_scene(str(root))


def test_malformed_text_and_unknown_models(tmp_path):
    root, model = _small_scene(tmp_path, ".txt")
    good = (model / "cameras.txt").read_text()
    (model / "cameras.txt").write_text(good + "77 PINHOLE 100 100 1 2 3\n")  # PINHOLE takes 4 parameters
    with pytest.raises(ColmapError, match=r"cameras\.txt:\d+: PINHOLE takes 4 parameters, got 3"):
        read_model(str(model))
    (model / "cameras.txt").write_text(good + "77 BANANA 100 100 1 2 3\n")
    with pytest.raises(ColmapError, match=r"cameras\.txt:\d+: unknown camera model 'BANANA'"):
        read_model(str(model))
    (model / "cameras.txt").write_text(good)
    (model / "points3D.txt").write_text("1 0.5 zero 1 2 3 4 0.1\n")
    with pytest.raises(ColmapError, match=r"points3D\.txt:1: malformed"):
        read_model(str(model))
    os.unlink(model / "points3D.txt")
    with pytest.raises(ColmapError, match=r"points3D\.txt: missing"):
        read_model(str(model))
    # a binary camera with a model id COLMAP does not define
    root2, model2 = _small_scene(tmp_path / "b")
    data = bytearray((model2 / "cameras.bin").read_bytes())
    data[12:16] = (99).to_bytes(4, "little")  # model id of the first camera (after count u64, id i32)
    (model2 / "cameras.bin").write_bytes(bytes(data))
    with pytest.raises(ColmapError, match=r"cameras\.bin: camera \d+ has unknown model id 99"):
        read_model(str(model2))
