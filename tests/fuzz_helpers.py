"""Shared machinery of the reader fuzz suites: every mutated file must end in the reader's own error
class naming the file, within a time limit, and without the reader writing anywhere outside the
test's temporary folder (watched through Python's audit hooks: every open for writing, rename,
removal or new folder)."""
from __future__ import annotations

import contextlib
import os
import random
import signal
import sys

import pytest

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_WATCH = {"root": None, "outside": []}


def _audit(event: str, args):
    root = _WATCH["root"]
    if root is None:
        return
    paths = []
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS)
        if writing:
            paths.append(path)
    elif event in ("os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.truncate"):
        paths.extend(a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike)))
    for p in paths:
        if isinstance(p, int) or os.fsdecode(p).endswith(".pyc"):  # Python's own bytecode cache
            continue
        full = os.path.realpath(os.fsdecode(p))
        if not (full == root or full.startswith(root + os.sep)):
            _WATCH["outside"].append((event, full))


sys.addaudithook(_audit)  # audit hooks cannot be removed: it is idle while _WATCH["root"] is None


class CaseTimeout(Exception):
    pass


@contextlib.contextmanager
def guarded(tmp_path, seconds: float = 10.0):
    """Runs the block with a time limit (SIGALRM) while watching for writes outside tmp_path."""
    def _timeout(signum, frame):
        raise CaseTimeout(f"no result within {seconds} s")

    old = signal.signal(signal.SIGALRM, _timeout)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    _WATCH["root"], _WATCH["outside"] = os.path.realpath(tmp_path), []
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        outside, _WATCH["root"] = list(_WATCH["outside"]), None
        assert not outside, f"writes outside the test folder: {outside[:5]}"


def expect_error(tmp_path, error_cls, names, fn, *args, seconds: float = 10.0, **kwargs):
    """fn(*args) must raise exactly `error_cls` (or a subclass) whose message names `names`."""
    with guarded(tmp_path, seconds):
        with pytest.raises(Exception) as info:
            fn(*args, **kwargs)
    e = info.value
    assert isinstance(e, error_cls), f"{type(e).__name__} instead of {error_cls.__name__}: {e}"
    for name in ([names] if isinstance(names, str) else names):
        assert name in str(e), f"the message does not name {name!r}: {e}"
    return e


def outcome(tmp_path, error_cls, name, fn, *args, seconds: float = 10.0) -> str:
    """For mutations that may leave a valid file (a flipped colour byte): 'refused' (error_cls naming
    `name`) or 'read'; any other exception, a hang or a write outside tmp_path fails the test."""
    with guarded(tmp_path, seconds):
        try:
            fn(*args)
        except error_cls as e:
            assert name in str(e), f"the message does not name {name!r}: {e}"
            return "refused"
    return "read"


def flipped(data: bytes, seed: int, count: int = 1, lo: int = 0, hi: int | None = None) -> bytes:
    """`data` with `count` random bytes in [lo, hi) replaced by different random values (fixed seed)."""
    rng = random.Random(seed)
    out = bytearray(data)
    hi = len(out) if hi is None else min(hi, len(out))
    for _ in range(count):
        i = rng.randrange(lo, hi)
        out[i] = (out[i] + rng.randrange(1, 256)) % 256
    return bytes(out)
