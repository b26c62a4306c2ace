"""What the converters' command lines share: an output already there is never written
over, and an expected failure (no torch, a missing or foreign weights file, an output
in the way) ends in one `error:` line and exit status 1, as `python -m lasad_jax.main`
does. Their `main(argv)` functions raise as usual, for tests and callers."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

# What a converter raises for bad input: its message is written for the user.
EXPECTED = (ImportError, OSError, ValueError, TypeError)


def refuse_existing(*paths: str) -> None:
    """`FileExistsError` naming the first of `paths` that exists: weights converted (or
    anything else) at the output path may be in use, and are not replaced."""
    for path in paths:
        if os.path.lexists(path):
            raise FileExistsError(f"{path} already exists; move it away or choose another "
                                  "--out (a converter never writes over a file)")


def run(main: Callable[[Sequence[str] | None], int | None]) -> int:
    """`main(None)` (the process's arguments) as a command: its status, or 1 after one
    `error:` line for an expected failure (`LASAD_TRACEBACK=1` re-raises it)."""
    try:
        return main(None) or 0
    except EXPECTED as err:
        if os.environ.get("LASAD_TRACEBACK") == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
