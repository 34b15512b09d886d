"""Scenes: COLMAP models (bin/txt), NeRF-style transforms.json, and the standard 3DGS .ply."""
from gsplat_kit.scene.colmap import ColmapError, read_model, write_model
from gsplat_kit.scene.dataset import Scene, View, load_scene
from gsplat_kit.scene.ply import PlyError, load_ply, save_ply, sh_degree_of

__all__ = ["load_scene", "Scene", "View", "load_ply", "save_ply", "sh_degree_of", "PlyError", "ColmapError",
           "read_model", "write_model"]
