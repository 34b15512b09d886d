"""Torch files are loaded as data only (`weights_only=True`): tensors, numbers, strings and plain
containers. A checkpoint or weights file from someone else can then never run code on load."""
from __future__ import annotations

import os
import pickle
import re

import torch

from gsplat_kit.common.errors import UserError


class UnsafeFileError(UserError):
    """A torch file that holds pickled objects other than data; it is refused, not executed."""


def load_torch_data(path: str | os.PathLike, what: str = "file", map_location="cpu"):
    """torch.load(path, weights_only=True) with one-line errors naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(2, f"no such {what}", path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise UnsafeFileError(f"{path}: this {what} holds a pickled object ({found.group(1)}), not only tensors "
                                  f"and plain data; gsplat_kit does not unpickle such files") from None
        raise UserError(f"{path}: not a readable {what} ({str(e).strip().splitlines()[0][:120]})") from None
    except Exception as e:  # truncated zip, not a torch file, ...
        raise UserError(f"{path}: not a readable {what} ({type(e).__name__}: {str(e).strip()[:200]})") from None
