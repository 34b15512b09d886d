"""Text-driven image editing on diffusers' Stable Diffusion: Prompt-to-Prompt controllers run by a fused
native attention kernel (gsplat_kit._C), real-image inversion and Plug-and-Play.

Names are imported on first use (PEP 562), so that `import gsplat_kit.edit.cli` (the CLI's --help) does
not pay for torch and diffusers."""
from __future__ import annotations

import importlib

_EXPORTS = {
    "AttentionControl": "controllers", "AttentionRefine": "controllers", "AttentionReplace": "controllers",
    "AttentionReweight": "controllers", "AttentionStore": "controllers", "LocalBlend": "controllers",
    "get_equalizer": "controllers", "Prompt2PromptOutput": "pipeline", "Prompt2PromptPipeline": "pipeline",
    "P2PAttnProcessor": "processor", "UnsupportedModelError": "processor",
    "register_attention_control": "processor", "attention_grid": "viz", "PlugAndPlayPipeline": "pnp",
    "StableDiffusionBase": "stable_diffusion",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
