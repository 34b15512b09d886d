"""Paths taken from files (image names, `file_path`, class names) stay inside their root: a file handed
in by someone else must not make gsplat_kit read or write anywhere it chooses."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from gsplat_kit.common.errors import UserError


def inside(root: str | os.PathLike, rel: str, what: str) -> Path:
    """`root/rel`, resolved (symlinks too); a `rel` that is absolute, empty, or leads outside `root` is
    refused with a UserError naming `what` (e.g. "cameras.bin: image 12 name")."""
    if not isinstance(rel, str) or not rel.strip() or "\x00" in rel:
        raise UserError(f"{what}: {rel!r} is not a usable relative path")
    if os.path.isabs(rel) or Path(rel).drive:
        raise UserError(f"{what}: {rel!r} is an absolute path; only paths inside {root} are allowed")
    base = Path(root).resolve()
    full = (base / rel).resolve()
    if full != base and base not in full.parents:
        raise UserError(f"{what}: {rel!r} leads outside {root}")
    return full


_UNSAFE = re.compile(r"[^A-Za-z0-9._ +-]+")
_RESERVED = {"", ".", ".."}


def safe_name(name: str) -> str:
    """A folder/file name for an arbitrary label (e.g. a class name), deterministic and collision-free:
    safe labels are kept as they are; anything else becomes its safe characters plus a short hash of
    the original, so two different labels never share a name."""
    if not isinstance(name, str):
        name = str(name)
    cleaned = _UNSAFE.sub("_", name).strip(" .")
    if cleaned == name and name not in _RESERVED and len(name) <= 100:
        return name
    digest = hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{cleaned[:80] or 'label'}-{digest}"
