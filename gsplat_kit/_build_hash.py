"""The hash of the native sources that a build was made from: one definition, imported by setup.py (by
file path, before torch or the package can be imported) and by gsplat_kit._backend (to tell a stale
build from a fresh one). Standard library only."""
from __future__ import annotations

import glob
import hashlib
import os

PATTERNS = ("**/*.cpp", "**/*.cu", "**/*.h", "**/*.cuh")
# csrc/simt/ is the test-only SIMT harness: not part of gsplat_kit._C (setup.py leaves it out).
HARNESS_DIR = "simt"


def source_files(root: str, harness: bool = False) -> list[str]:
    """Every native source under root/csrc, relative to root, sorted; the harness runtime only if asked."""
    csrc = os.path.join(root, "csrc")
    files = {os.path.relpath(f, root) for p in PATTERNS for f in glob.glob(os.path.join(csrc, p), recursive=True)}
    if not harness:
        skip = os.path.join("csrc", HARNESS_DIR) + os.sep
        files = {f for f in files if not f.startswith(skip)}
    return sorted(files)


def sources_hash(root: str, harness: bool = False) -> str | None:
    """sha256 over the names and contents of source_files(root); None outside a source checkout."""
    if not os.path.isdir(os.path.join(root, "csrc")):
        return None
    h = hashlib.sha256()
    for f in source_files(root, harness):
        h.update(f.encode())
        with open(os.path.join(root, f), "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()
