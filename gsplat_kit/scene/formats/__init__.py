"""The splat file formats gsplat_kit reads and writes, in one table.

  ply             the original 3DGS .ply (float32, every parameter exact)            scene/ply.py
  compressed-ply  PlayCanvas/SuperSplat's chunked, quantised .ply (*.compressed.ply)  formats/compressed_ply.py
  splat           antimatter15's .splat (32 bytes a Gaussian, no higher SH bands)     formats/splat.py
  spz             Niantic's .spz (quantised; gzip v1-3, zstd v4; 2-4 written)         formats/spz.py

Readers return raw parameters (means, quats, scales, opacities, sh0, shN); `load_splats` (scene/splats.py)
validates them. A .ply of either layout reads through the same reader, which tells them apart by the
header. Writers take a `Splats` (or a dict of raw parameters) and write atomically.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from gsplat_kit.common.atomic import write_bytes
from gsplat_kit.common.errors import UserError
from gsplat_kit.scene.formats import compressed_ply, spz, splat
from gsplat_kit.scene.formats.packing import numpy_params
from gsplat_kit.scene.ply import load_ply, save_ply, write_elements
from gsplat_kit.scene.splats import Splats


@dataclass(frozen=True)
class SplatFormat:
    name: str
    suffix: str
    summary: str
    read: Callable  # path -> raw parameters
    write: Callable  # (path, numpy raw parameters, **options) -> None
    also: tuple = ()  # other suffixes its files may carry

    def matches(self, path) -> bool:
        return str(path).lower().endswith((self.suffix, *self.also))


def _write_compressed_ply(path, params):
    write_elements(path, compressed_ply.encode(params)[0])


def _write_splat(path, params):
    write_bytes(path, splat.encode(params)[0])


def _write_spz(path, params, spz_version: int = 3):
    write_bytes(path, spz.encode(params, version=spz_version))


FORMATS = {f.name: f for f in [
    SplatFormat("ply", ".ply", "3DGS, exact", load_ply, save_ply),
    SplatFormat("compressed-ply", ".compressed.ply", "PlayCanvas, quantised", load_ply, _write_compressed_ply,
                also=(".ply",)),
    SplatFormat("splat", ".splat", "antimatter15, no higher SH", splat.read, _write_splat),
    SplatFormat("spz", ".spz", "Niantic, quantised + gzip/zstd", spz.read, _write_spz),
]}


def known_formats() -> str:
    return ", ".join(f"{f.suffix} ({f.summary})" for f in FORMATS.values())


def format_for(path, name: str | None = None) -> SplatFormat:
    """The format to write `path` in: `name` when given (it must agree with the extension), else the
    extension's (*.compressed.ply before *.ply)."""
    if name is not None:
        fmt = FORMATS.get(name)
        if fmt is None:
            raise UserError(f"unknown splat format {name!r}; known: {', '.join(FORMATS)}")
        if not fmt.matches(path):
            raise UserError(f"{path}: the {name} format's files end in {fmt.suffix}")
        return fmt
    lower = str(path).lower()
    for fmt in sorted(FORMATS.values(), key=lambda f: -len(f.suffix)):
        if lower.endswith(fmt.suffix):
            return fmt
    ext = os.path.splitext(lower)[1] or "(none)"
    raise UserError(f"{path}: unknown splat file extension {ext}; known: {known_formats()}")


def save_splats(path, splats, fmt: str | None = None, **options) -> SplatFormat:
    """Writes splats (a Splats or raw parameters) to `path` in the format its extension (or `fmt`) names;
    returns the format."""
    form = format_for(path, fmt)
    checked = Splats.checked(splats.params if isinstance(splats, Splats) else splats, f"{path} (to write)")
    form.write(path, numpy_params(checked), **options)
    return form
