"""The one error type for bad input. The CLI prints its message as one line and exits 2; anything else
that escapes a verb is a bug and keeps its traceback (exit 1)."""
from __future__ import annotations


class UserError(ValueError):
    """Bad input: a file, a field or an argument that cannot be used. The message names it.

    A ValueError, so code that already catches ValueError keeps working; every reader's own error class
    (PlyError, ColmapError, ...) derives from it.
    """


# OSErrors about a path the user gave are user errors too (missing file, read-only folder, ...).
USER_OS_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


def one_line(e: BaseException) -> str:
    """An exception as one line: first line of its message, with the path an OSError carries."""
    if isinstance(e, OSError) and not isinstance(e, UserError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    text = str(e).strip() or type(e).__name__
    return " ".join(text.split("\n")[0].split())
