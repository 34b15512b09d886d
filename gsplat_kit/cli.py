"""The `gsplat-kit` command: `gsplat-kit <verb> --help`.

Each verb lives beside the code it drives: a module with `register(subparsers)` that adds its parser
and sets `func`. Those modules keep heavy imports (torch, diffusers) inside their handlers so that
`--help` stays fast.

Errors are handled here, once: bad input (a `UserError`, or an OSError about a path the user gave) is
one line on stderr and exit 2; anything else is a bug and keeps its traceback (exit 1).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from gsplat_kit._backend import NativeBuildError
from gsplat_kit._extras import extra_for
from gsplat_kit.common.errors import USER_OS_ERRORS, UserError, one_line

# verb modules, in the order --help lists them
_VERB_MODULES = [
    "gsplat_kit.sfm.cli",        # sfm
    "gsplat_kit.train.cli",      # train, eval, render, export
    "gsplat_kit.viewer.cli",     # view
    "gsplat_kit.edit.cli",       # edit, invert, pnp
    "gsplat_kit.synth.cli",      # synthesize, distill, prune, train-teacher
]


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors as one line (exit 2) like every other user error."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gsplat-kit", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"gsplat_kit {__import__('gsplat_kit').__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="<verb>")
    for name in _VERB_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue  # a component not present in this checkout
        mod.register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (UserError, NativeBuildError, *USER_OS_ERRORS) as e:  # a missing build: the message says how to build
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # an optional dependency: name the extra that brings it
        extra = extra_for(e.name)
        if extra is None:
            raise
        print(f"error: gsplat-kit {args.verb} needs {e.name.split('.')[0]}, an optional dependency: "
              f"pip install 'gsplat_kit[{extra}]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
