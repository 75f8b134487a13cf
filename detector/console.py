"""The console script's first step: Ctrl-C handled from the first instant, before any library loads.

Only the standard library is imported here; :mod:`detector.cli` and everything it needs load under the
handler, so an interrupt at any moment ends in one line and exit status 130.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

INTERRUPTED = 130  # the shell's code for a Ctrl-C
IMPORT_FRAMES = "<frozen importlib"  # the import system's own frames
RETRY_S = 0.05
INTERRUPTED_LINE = "detector: interrupted; results already complete are kept"


def entry() -> int:
    """The console script: :func:`detector.cli.main`, then no interrupt during the exit (the work is done, or said
    not to be; a Ctrl-C now would only print a trace of the interpreter's shutdown).  After an interrupt the
    process ends at once: what it was doing is already cleaned up, and half-imported libraries' exit handlers have
    nothing to say."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where the shell said to ignore it
        signal.signal(signal.SIGINT, interrupt_after_imports)
    try:
        from detector.cli import main

        code = main()
    except KeyboardInterrupt:
        code = interrupted()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if code == INTERRUPTED:
        sys.stderr.flush()
        os._exit(code)
    return code


def interrupted() -> int:
    """Say so in one line; the exit status of an interrupt."""
    print(INTERRUPTED_LINE, file=sys.stderr)
    return INTERRUPTED


_waiting: dict[str, bool] = {}  # "interrupt": a Ctrl-C waits for an import to end; "resent": the next SIGINT is ours


def interrupt_after_imports(signum: int, frame: FrameType | None) -> None:
    """SIGINT handler: Python's KeyboardInterrupt, but not inside an import.  Raised while a native library
    initializes (torch's pybind11 modules run Python code as they load), it cannot unwind the C++ that called
    that code and the process aborts; so the signal is sent again every ``RETRY_S`` until the import is over,
    one resend at a time.  A second Ctrl-C while the first waits (an import that hangs) ends the process at once,
    as a kill would: what a run writes is staged and swapped in whole, so earlier results stay as they were.
    (A press in the same instant as a resend counts once: the signals merge.)"""
    ours = _waiting.pop("resent", False)
    if ours and not _waiting.get("interrupt"):
        return  # a resend that crossed a second Ctrl-C pressed just after the import: that one was the interrupt
    if not importing(frame):
        _waiting.clear()
        raise KeyboardInterrupt
    if _waiting.get("interrupt") and not ours:
        os.write(2, f"{INTERRUPTED_LINE}\n".encode())  # not print: this may interrupt a print to stderr
        os._exit(INTERRUPTED)
    _waiting["interrupt"] = True
    timer = threading.Timer(RETRY_S, _resend, (signum,))
    timer.daemon = True
    timer.start()


def _resend(signum: int) -> None:
    _waiting["resent"] = True
    os.kill(os.getpid(), signum)


def importing(frame: FrameType | None) -> bool:
    """Whether ``frame`` or one of its callers is the import system's."""
    while frame is not None:
        if frame.f_code.co_filename.startswith(IMPORT_FRAMES):
            return True
        frame = frame.f_back
    return False
