"""One exception family for everything a user can get wrong.

Each member also inherits the built-in error it is, so callers that catch
``ValueError`` or ``OSError`` keep working.  Messages say what was wrong, the
value, and how to fix it; the CLI prints them as one line and exits with 2.
"""

from __future__ import annotations


class DetectorError(Exception):
    """Base of every error caused by input, options or the environment."""


class InputError(DetectorError, ValueError):
    """An input file exists but cannot be used as given."""


class MissingFileError(DetectorError, FileNotFoundError):
    """An input path does not exist."""


class OutputExistsError(DetectorError, FileExistsError):
    """The output folder holds results and ``--overwrite`` was not given."""


class ScratchError(DetectorError, OSError):
    """A temporary file of the run cannot be written (a full disk)."""


def first_line(exc: BaseException, *, limit: int = 160) -> str:
    """The first line of an exception's text, at most ``limit`` characters: it goes into a one-line message."""
    text = str(exc).strip().splitlines()
    return text[0][:limit] if text else type(exc).__name__
