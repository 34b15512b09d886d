"""The optional dependencies, by extra (`pip install 'gsplat_kit[edit]'`), written once: setup.py declares
them from here (loading this file by path: it imports nothing), and the CLI names the extra to install
when a verb meets one missing."""
from __future__ import annotations

EXTRAS = {  # extra -> {module imported: requirement}
    "edit": {"diffusers": "diffusers>=0.30", "transformers": "transformers>=4.40", "safetensors": "safetensors>=0.4"},
    "synth": {"torch_pruning": "torch-pruning>=1.6"},
}


def extras_require() -> dict[str, list[str]]:
    reqs = {extra: sorted(mods.values()) for extra, mods in EXTRAS.items()}
    reqs["all"] = sorted({r for rs in reqs.values() for r in rs})
    return reqs


def extra_for(module: str | None) -> str | None:
    """The extra that provides `module` (a dotted name: its top-level package counts), or None."""
    top = (module or "").split(".")[0]
    return next((extra for extra, mods in EXTRAS.items() if top in mods), None)
