"""Structure from motion from raw photos (pycolmap): `run_sfm(image_dir, out_dir) -> summary dict`."""
from gsplat_kit.sfm.align import align_centres, json_centres, model_centres, strecha_centres, umeyama
from gsplat_kit.sfm.pipeline import SfMError, format_summary, list_images, run_sfm

__all__ = ["run_sfm", "SfMError", "format_summary", "list_images", "umeyama", "align_centres", "model_centres",
           "strecha_centres", "json_centres"]
