"""Structure from motion from a folder of photos with pycolmap (CPU SIFT):

    feature extraction -> matching (exhaustive, or sequential for video frames) -> incremental mapping
    -> undistortion -> OUT/images + OUT/sparse/0 (PINHOLE cameras), the layout `load_scene` reads.

`run_sfm` prints progress and a summary (registered images / total, points, mean reprojection error)
and returns the summary as a dict; it is also written to OUT/sfm_summary.json.
"""
from __future__ import annotations

import os
import shutil
import sys
import time

from gsplat_kit.common.atomic import write_json
from gsplat_kit.common.errors import UserError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV")
EXHAUSTIVE_MAX = 120  # "auto" matcher: exhaustive up to this many images (n^2 pairs), sequential above


class SfMError(UserError):
    """SfM could not produce a usable model from these photos (no images, too few registered...)."""


def list_images(image_dir: str) -> list[str]:
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"{image_dir}: no such image folder")
    names = sorted(f for f in os.listdir(image_dir)
                   if f.lower().endswith(IMAGE_EXTS) and os.path.isfile(os.path.join(image_dir, f)))
    if not names:
        raise SfMError(f"{image_dir}: no images (looked for {', '.join(IMAGE_EXTS)})")
    return names


def run_sfm(image_dir: str, out_dir: str, matcher: str = "auto", camera_model: str = "SIMPLE_RADIAL",
            single_camera: bool = True, max_image_size: int = 1600, max_num_features: int = 8192,
            min_registered: float = 0.5, num_threads: int = -1, seed: int = 0, verbose: bool = False,
            undistort: bool = True) -> dict:
    """Reconstructs cameras and sparse points from the photos in `image_dir` into `out_dir`.

    matcher: "exhaustive" (every pair; small unordered sets), "sequential" (each frame with its
    neighbours in name order; video), or "auto" (exhaustive up to 120 images). Raises SfMError when no
    model registers at least `min_registered` (fraction, or an absolute count if >= 1) of the images.
    """
    import pycolmap

    image_dir = os.path.abspath(image_dir)
    out_dir = os.path.abspath(out_dir)
    names = list_images(image_dir)
    for sub in ("images", "sparse"):  # these get replaced at the end: never the photos themselves
        victim = os.path.realpath(os.path.join(out_dir, sub))
        real = os.path.realpath(image_dir)
        if real == victim or real.startswith(victim + os.sep):
            raise ValueError(f"OUT {out_dir}: its {sub}/ would replace the input photos {image_dir}; move the "
                             f"photos elsewhere (e.g. {os.path.join(out_dir, 'input')}) or choose another OUT")
    if len(names) < 2:
        raise SfMError(f"{image_dir}: SfM needs at least 2 images, found {len(names)}")
    if matcher == "auto":
        matcher = "exhaustive" if len(names) <= EXHAUSTIVE_MAX else "sequential"
    if matcher not in ("exhaustive", "sequential"):
        raise ValueError(f"matcher must be auto, exhaustive or sequential, got {matcher!r}")
    if camera_model not in CAMERA_MODELS:
        raise ValueError(f"camera_model must be one of {', '.join(CAMERA_MODELS)}, got {camera_model!r}")
    need = min_registered if min_registered >= 1 else max(2, int(round(min_registered * len(names))))
    if single_camera:
        sizes = _image_sizes(image_dir, names)
        if len(sizes) > 1:  # one shared camera cannot have two image sizes: COLMAP would refuse
            print(f"[sfm] {len(sizes)} different image sizes: one camera per image instead of a shared one",
                  flush=True)
            single_camera = False

    # COLMAP's INFO/WARNING chatter is hidden unless asked for; our own progress lines stay
    pycolmap.logging.minloglevel = 0 if verbose else 2
    os.makedirs(out_dir, exist_ok=True)
    work = os.path.join(out_dir, ".sfm_work")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    db = os.path.join(work, "database.db")
    cpu = pycolmap.Device.cpu
    t0 = time.perf_counter()
    times = {}

    def stage(msg):
        print(f"[sfm] {msg}", flush=True)

    try:
        # 1. features
        stage(f"extracting SIFT features from {len(names)} images in {image_dir}")
        reader = pycolmap.ImageReaderOptions()
        reader.camera_model = camera_model
        ext = pycolmap.FeatureExtractionOptions()
        ext.num_threads = num_threads
        ext.max_image_size = max_image_size
        ext.sift.max_num_features = max_num_features
        mode = pycolmap.CameraMode.SINGLE if single_camera else pycolmap.CameraMode.AUTO
        pycolmap.extract_features(db, image_dir, image_names=names, camera_mode=mode, reader_options=reader,
                                  extraction_options=ext, device=cpu)
        times["features_s"] = time.perf_counter() - t0

        # 2. matching
        t = time.perf_counter()
        stage(f"{matcher} matching")
        mopt = pycolmap.FeatureMatchingOptions()
        mopt.num_threads = num_threads
        if matcher == "exhaustive":
            pycolmap.match_exhaustive(db, matching_options=mopt, device=cpu)
        else:
            pair = pycolmap.SequentialPairingOptions()
            pair.overlap = 10
            pair.quadratic_overlap = True
            pycolmap.match_sequential(db, matching_options=mopt, pairing_options=pair, device=cpu)
        times["matching_s"] = time.perf_counter() - t

        # 3. incremental mapping, with a bar counting registered images
        t = time.perf_counter()
        stage("incremental mapping")
        opts = pycolmap.IncrementalPipelineOptions()
        opts.num_threads = num_threads
        opts.random_seed = seed
        from tqdm import tqdm

        bar = tqdm(total=len(names), desc="[sfm] registered", unit="img", file=sys.stdout, leave=False)
        on_init, on_image = (lambda: bar.update(2)), (lambda: bar.update(1))  # initial pair, then one by one

        sparse_raw = os.path.join(work, "sparse")
        os.makedirs(sparse_raw)
        try:
            recs = pycolmap.incremental_mapping(db, image_dir, sparse_raw, options=opts,
                                                initial_image_pair_callback=on_init, next_image_callback=on_image)
        finally:
            bar.close()
        times["mapping_s"] = time.perf_counter() - t
        if not recs:
            raise SfMError(f"{image_dir}: mapping found no model (the photos share too few matching features: "
                           f"more overlap, more texture, or --matcher exhaustive may help)")
        best_id, rec = max(recs.items(), key=lambda kv: kv[1].num_reg_images())
        n_reg = rec.num_reg_images()
        if n_reg < need:
            raise SfMError(f"{image_dir}: only {n_reg} of {len(names)} images registered (need {need}); "
                           f"{len(recs)} model(s) found")
        registered = sorted(rec.images[i].name for i in rec.reg_image_ids())
        summary = {
            "image_dir": image_dir, "out_dir": out_dir, "matcher": matcher, "camera_model": camera_model,
            "num_images": len(names), "num_registered": n_reg, "num_models": len(recs),
            "num_points": rec.num_points3D(), "mean_reprojection_error": float(rec.compute_mean_reprojection_error()),
            "mean_track_length": float(rec.compute_mean_track_length()) if rec.num_points3D() else 0.0,
            "unregistered": sorted(set(names) - set(registered)),
        }

        # 4. undistortion -> PINHOLE model and images in the layout load_scene reads
        t = time.perf_counter()
        stage("undistorting" if undistort else "writing the model")
        model_dir = os.path.join(sparse_raw, str(best_id))
        rec.write(model_dir)
        staged = os.path.join(work, "out")
        if undistort:
            pycolmap.undistort_images(staged, model_dir, image_dir, image_names=registered, num_threads=num_threads)
            flat = os.path.join(staged, "sparse")
            os.makedirs(os.path.join(flat, "0"), exist_ok=True)
            for f in ("cameras.bin", "images.bin", "points3D.bin", "rigs.bin", "frames.bin"):
                if os.path.exists(os.path.join(flat, f)):
                    os.replace(os.path.join(flat, f), os.path.join(flat, "0", f))
        else:
            os.makedirs(os.path.join(staged, "sparse"))
            shutil.copytree(model_dir, os.path.join(staged, "sparse", "0"))
            os.makedirs(os.path.join(staged, "images"))
            for n in registered:
                shutil.copy2(os.path.join(image_dir, n), os.path.join(staged, "images", n))
        # swap the finished folders in (a failed run above leaves any previous result untouched)
        for sub in ("images", "sparse"):
            dst = os.path.join(out_dir, sub)
            if os.path.exists(dst):
                shutil.rmtree(dst)
            os.replace(os.path.join(staged, sub), dst)
        times["undistort_s"] = time.perf_counter() - t
        times["total_s"] = time.perf_counter() - t0
        summary.update({k: round(v, 2) for k, v in times.items()})
        write_json(os.path.join(out_dir, "sfm_summary.json"), summary)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the database and raw models: only needed while running
    print(format_summary(summary), flush=True)
    return summary


def _image_sizes(image_dir: str, names: list[str]) -> set:
    from PIL import Image

    sizes = set()
    for n in names:
        p = os.path.join(image_dir, n)
        try:
            with Image.open(p) as im:  # reads the header only
                sizes.add(im.size)
        except OSError as e:
            raise SfMError(f"{p}: not a readable image ({e})") from None
    return sizes


def format_summary(s: dict) -> str:
    line = (f"[sfm] registered {s['num_registered']}/{s['num_images']} images, {s['num_points']} points, "
            f"mean reprojection error {s['mean_reprojection_error']:.3f} px, mean track length "
            f"{s['mean_track_length']:.2f} ({s['total_s']:.1f} s: features {s['features_s']:.1f}, matching "
            f"{s['matching_s']:.1f}, mapping {s['mapping_s']:.1f}, undistortion {s['undistort_s']:.1f})")
    if s["unregistered"]:
        line += f"\n[sfm] not registered: {', '.join(s['unregistered'][:10])}" + (" ..." if len(s["unregistered"]) > 10 else "")
    return line + f"\n[sfm] model: {s['out_dir']}/sparse/0, images: {s['out_dir']}/images"
