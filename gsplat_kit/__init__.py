"""gsplat_kit: 3D Gaussian Splatting, Prompt-to-Prompt editing and data-free synthesis.

The rasteriser is the package's front door: `gsplat_kit.rasterization(...)` (gsplat's conventions).
"""
__version__ = "0.1.0"


def __getattr__(name):
    # Lazy, so `import gsplat_kit` (and the CLI's --help) does not import torch.
    if name == "rasterization":
        from gsplat_kit.render import rasterization

        return rasterization
    raise AttributeError(f"module 'gsplat_kit' has no attribute {name!r}")


__all__ = ["rasterization", "__version__"]
