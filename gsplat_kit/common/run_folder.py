"""An output folder belongs to one run.

`RunFolder.claim(out, kind, resume=..., overwrite=...)` is how every verb that writes a folder (train,
edit, invert, pnp, synthesize, distill, ...) takes it:

- a folder that holds another run (its `gsplat_kit_run.json` marker) or other files is refused, unless
  `resume` (continue the run of the same kind) or `overwrite` (replace it) is asked for;
- `overwrite` writes the new run into a staging folder inside `out` and moves it into place only when
  the run finishes, removing only what the previous run had written: an interrupted overwrite leaves the
  previous run as it was;
- a lock (`fcntl.flock` on `.gsplat_kit.lock`, released by the kernel when a process dies, so a stale
  lock is told from a live one) keeps a second process out with a message naming the first;
- temporaries of interrupted writes (`common.atomic`) are removed when the folder is claimed.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shutil
import socket
from pathlib import Path

from gsplat_kit.common import atomic
from gsplat_kit.common.errors import UserError

MARKER = "gsplat_kit_run.json"
LOCK = ".gsplat_kit.lock"
_OWN = {MARKER, LOCK}


class RunFolder:
    """A claimed output folder; write into `.path`, then `finish()` (or use it as a context manager)."""

    def __init__(self, out: Path, kind: str, mode: str, lock_fd: int, before: set[str], previous: dict | None):
        self.out, self.kind, self.mode = out, kind, mode
        self.created = False  # set by claim() when it made the folder
        self._lock_fd = lock_fd
        self._before = before
        self._previous = previous
        self._finished = False
        self.path = out
        if mode == "overwrite":
            self.path = atomic.temp_path(out / "run")
            self.path.mkdir()
        else:
            self._write_marker(sorted((previous or {}).get("outputs", [])))

    # -- claiming --------------------------------------------------------------------------------------
    @classmethod
    def claim(cls, out, kind: str, *, resume: bool = False, overwrite: bool = False, flag: str = "--out",
              resumable: bool = True) -> RunFolder:
        """`resumable`: whether the verb offers --resume (the refusal says only what the user can pass)."""
        if resume and overwrite:
            raise UserError("--resume and --overwrite exclude each other")
        out = Path(out).expanduser()
        if out.exists() and not out.is_dir():
            raise UserError(f"{flag} {out}: is a file, not a folder")
        try:
            created = not out.exists()
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{flag} {out}: cannot create the folder ({e.strerror or e})") from None
        if not os.access(out, os.W_OK | os.X_OK):
            raise UserError(f"{flag} {out}: the folder is not writable")
        fd = _lock(out, kind, flag)
        try:
            atomic.remove_stale_temps(out)
            previous = _read_marker(out)
            before = {n for n in os.listdir(out) if n not in _OWN}
            if resume:
                if previous is None:
                    raise UserError(f"{flag} {out}: there is no gsplat_kit run here to resume")
                if previous.get("kind") != kind:
                    raise UserError(f"{flag} {out}: holds a {previous.get('kind')!r} run, not a {kind!r} run; "
                                    f"it cannot be resumed by {kind}")
                mode = "resume"
            elif overwrite:
                mode = "overwrite"
            else:
                if previous is not None:
                    state = "a previous" if previous.get("finished") else "an unfinished"
                    options = ("pass --resume to continue it or --overwrite to replace it" if resumable
                               else "pass --overwrite to replace it")
                    raise UserError(f"{flag} {out}: holds {state} {previous.get('kind')} run (started "
                                    f"{previous.get('started', '?')}); {options}, or choose another folder")
                if before:
                    raise UserError(f"{flag} {out}: the folder is not empty ({len(before)} entries, e.g. "
                                    f"{sorted(before)[0]!r}); choose an empty or new folder, or pass --overwrite")
                mode = "new"
            run = cls(out, kind, mode, fd, before, previous)
            run.created = created
            return run
        except BaseException:
            os.close(fd)
            raise

    # -- finishing -------------------------------------------------------------------------------------
    def finish(self) -> None:
        """The run is complete: an overwrite replaces the previous run now; the lock is released."""
        try:
            if self.mode == "overwrite":
                for name in (self._previous or {}).get("outputs", []):
                    if name in _OWN or os.sep in name or name in ("", ".", ".."):
                        continue
                    victim = self.out / name
                    if victim.is_dir() and not victim.is_symlink():
                        shutil.rmtree(victim)
                    elif victim.exists() or victim.is_symlink():
                        victim.unlink()
                moved = []
                for entry in sorted(os.listdir(self.path)):
                    dst = self.out / entry
                    if dst.is_dir() and not dst.is_symlink():
                        shutil.rmtree(dst)
                    os.replace(self.path / entry, dst)
                    moved.append(entry)
                self.path.rmdir()
                self.path = self.out
                self._write_marker(moved, finished=True)
            else:
                prev = set((self._previous or {}).get("outputs", []))
                self._write_marker(sorted(prev | (self._outputs_now() - self._before)), finished=True)
            self._finished = True
        finally:
            self.release()

    def _outputs_now(self) -> set[str]:
        return {n for n in os.listdir(self.out) if n not in _OWN and atomic.temp_owner(n) is None}

    def release(self) -> None:
        """Drops the lock without finishing (a failed run: its files stay for --resume). A new run that
        failed before writing anything takes its marker back, so the folder is as it was (a typo in an
        input path must not make the next attempt need --overwrite); a folder it created goes too."""
        if self._lock_fd >= 0:
            untouched = self.mode == "new" and not self._finished and not self._outputs_now()
            if untouched:
                (self.out / MARKER).unlink(missing_ok=True)
                (self.out / LOCK).unlink(missing_ok=True)
            os.close(self._lock_fd)
            self._lock_fd = -1
            if untouched and self.created:
                with contextlib.suppress(OSError):  # not empty after all: leave it
                    self.out.rmdir()

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.release()

    def _write_marker(self, outputs: list[str], finished: bool = False) -> None:
        prev = self._previous or {}
        info = {"kind": self.kind, "started": prev.get("started") if self.mode == "resume" else _now(),
                "outputs": outputs, "finished": finished, "host": socket.gethostname(), "pid": os.getpid()}
        if finished:
            info["finished_at"] = _now()
        atomic.write_json(self.out / MARKER, info)


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _read_marker(out: Path) -> dict | None:
    p = out / MARKER
    if not p.is_file():
        return None
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError):
        raise UserError(f"{p}: unreadable run marker; remove it if this folder holds no run") from None
    if not isinstance(d, dict) or not isinstance(d.get("outputs", []), list):
        raise UserError(f"{p}: malformed run marker; remove it if this folder holds no run")
    return d


def _lock(out: Path, kind: str, flag: str) -> int:
    """Takes the folder's lock or raises a UserError naming the process that holds it."""
    path = out / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        except ValueError:
            holder = {}
        os.close(fd)
        who = f"pid {holder.get('pid', '?')}, {holder.get('kind', 'a run')}" if holder else "another process"
        raise UserError(f"{flag} {out}: another gsplat-kit process ({who}) is writing to this folder; wait for "
                        f"it to finish or choose another folder") from None
    except BaseException:
        os.close(fd)
        raise
    info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "kind": kind, "since": _now()}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, info, 0)
    return fd
