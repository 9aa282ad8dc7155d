"""User-facing errors and the one place that turns them into an exit code.

A mistake the user can fix (a bad flag, a missing file, a checkpoint of the wrong shape) raises a
``UserError``; every entry script runs its ``main`` through ``run_main`` which prints that error as
one line on stderr and exits non-zero, without a traceback. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """A problem in what the user gave us; the message names the thing and what is expected."""

    exit_code = 1


class ConfigError(UserError):
    """A bad configuration file, flag or value (exit code 2, like argparse)."""

    exit_code = 2


def run_main(main: Callable[[], object]) -> None:
    """Call ``main``; report a ``UserError`` as a single line and exit with its code."""
    try:
        main()
    except UserError as err:
        message = " ".join(str(err).split("\n"))
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
