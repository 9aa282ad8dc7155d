"""User-facing errors and the one place that turns them into an exit code.

A mistake the user can fix (a bad flag, a missing file, a checkpoint of the wrong shape) raises a
``UserError``; every entry script runs its ``main`` through ``run_main`` which prints that error as
one line on stderr and exits non-zero, without a traceback. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from typing import NoReturn


class UserError(Exception):
    """A problem in what the user gave us; the message names the thing and what is expected."""

    exit_code = 1


class ConfigError(UserError):
    """A bad configuration file, flag or value (exit code 2, like argparse)."""

    exit_code = 2


# MindSpore's dataset engine names the input file a map operation failed on.
_PIPELINE_FILE_ERROR = re.compile(
    r"map operation: \[(?P<op>[^\]]+)\] failed\. The corresponding data file is: (?P<file>.+?)\. (?P<reason>[^\n]*)")


def pipeline_file_error(err: BaseException) -> UserError | None:
    """The dataset engine's failure on one input file (a corrupt or non-image file) as a UserError."""
    match = _PIPELINE_FILE_ERROR.search(str(err)) if isinstance(err, RuntimeError) else None
    if match is None:
        return None
    reason = match["reason"].strip().rstrip(".")
    if "decode" in reason.lower():
        return UserError(f"{match['file']}: not a readable image ({reason}); remove or replace this file")
    return UserError(f"{match['file']}: the data pipeline's {match['op']} failed on this file ({reason})")


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors raise ConfigError (one line via run_main) instead of printing usage."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def run_main(main: Callable[[], object]) -> None:
    """Call ``main``; report a ``UserError`` as a single line and exit with its code."""
    try:
        try:
            main()
        except RuntimeError as err:
            data_error = pipeline_file_error(err)
            if data_error is None:
                raise
            raise data_error from None
    except UserError as err:
        message = " ".join(str(err).split("\n"))
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
