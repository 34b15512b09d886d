"""Atomic writes: everything is written to a temporary name beside its target and renamed into place,
so a reader (or a crash) never sees half a file. Temporary names carry the writer's pid, so an
interrupted write is recognised and removed by the next run (`remove_stale_temps`)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path

TMP_TAG = ".gk-tmp-"  # .<name>.gk-tmp-<pid>-<random>


def temp_path(path: str | os.PathLike) -> Path:
    """A fresh temporary name beside `path` (same folder, so the final rename is atomic)."""
    p = Path(path)
    return p.with_name(f".{p.name}{TMP_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yields a temporary path for writers that want a file name (torch.save, PIL, video encoders); it
    is renamed onto `path` when the block succeeds. The temporary keeps `path`'s suffix, so writers that
    pick a format from the extension still do."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    tmp = tmp.with_name(tmp.name + path.suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """`with atomic_write(p) as f: ...` writes p all or nothing (fsync'ed before the rename)."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yields a temporary folder beside `path`; when the block succeeds it becomes `path` (which must not
    exist, or be an empty folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    tmp.mkdir()
    try:
        yield tmp
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes(path, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path, obj, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def temp_owner(name: str) -> int | None:
    """The pid in a temporary name made by `temp_path`, or None for other names."""
    i = name.rfind(TMP_TAG)
    if not name.startswith(".") or i < 0:
        return None
    pid = name[i + len(TMP_TAG):].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Removes (recursively) the temporaries of writers that are no longer running; returns them."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for root, dirs, files in os.walk(folder):
        for name in list(dirs) + files:
            pid = temp_owner(name)
            if pid is None or _pid_alive(pid):  # not ours, or its writer is still at work (or is us)
                continue
            p = Path(root) / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
                dirs.remove(name)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed
