"""`gsplat-kit sfm IMAGES OUT`: cameras and sparse points from raw photos (pycolmap, CPU SIFT)."""
from __future__ import annotations

from gsplat_kit.common.options import ranged
from gsplat_kit.sfm.pipeline import CAMERA_MODELS


def _sfm(args) -> int:
    from gsplat_kit.sfm.pipeline import run_sfm

    run_sfm(args.images, args.out, matcher=args.matcher, camera_model=args.camera_model,
            single_camera=args.single_camera, max_image_size=args.max_image_size,
            max_num_features=args.max_features, num_threads=args.threads, verbose=args.verbose,
            undistort=not args.no_undistort)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("sfm", help="structure from motion: photos -> COLMAP model (images/ + sparse/0)",
                              description="Runs pycolmap SIFT extraction, matching, incremental mapping and "
                                          "undistortion; OUT then holds images/ and sparse/0 (PINHOLE) for "
                                          "`gsplat-kit train --data OUT`.")
    p.add_argument("images", metavar="IMAGES", help="folder of photos (png/jpg)")
    p.add_argument("out", metavar="OUT", help="output folder (images/, sparse/0/, sfm_summary.json)")
    p.add_argument("--matcher", choices=["auto", "exhaustive", "sequential"], default="auto",
                   help="exhaustive: every pair (unordered photos); sequential: neighbours in name order "
                        "(video frames); auto: exhaustive up to 120 images (default)")
    p.add_argument("--camera-model", choices=CAMERA_MODELS, default="SIMPLE_RADIAL",
                   help="camera model estimated during mapping (undistorted to PINHOLE afterwards)")
    p.add_argument("--single-camera", dest="single_camera", action="store_true", default=True,
                   help="all photos share one camera (default)")
    p.add_argument("--per-image-camera", dest="single_camera", action="store_false",
                   help="one camera per photo (mixed devices or zoom)")
    p.add_argument("--max-image-size", type=ranged(int, lo=16), default=1600, help="longest side used for features")
    p.add_argument("--max-features", type=ranged(int, lo=1), default=8192, help="SIFT features per image")
    p.add_argument("--threads", type=ranged(int, lo=1, allow=(-1,)), default=-1, help="CPU threads (-1: all)")
    p.add_argument("--no-undistort", action="store_true", help="keep the estimated (distorted) camera model")
    p.add_argument("--verbose", action="store_true", help="show COLMAP's own log")
    p.set_defaults(func=_sfm)
