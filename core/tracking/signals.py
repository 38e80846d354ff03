"""How a script's end reaches its runs: SIGTERM, an uncaught exception, the interpreter's
exit.

Installed once, on the first ``mlrig.start_run``:

* **SIGTERM** (only in the main thread, and only when nobody else handles it) raises
  :class:`Terminated` (a ``KeyboardInterrupt``) where the script is, so ``with`` blocks
  end their runs ``killed``; if nothing catches it, the open runs end ``killed`` and the
  process dies of SIGTERM as it would have.
* an **uncaught exception** (``sys.excepthook``) ends the open runs ``failed`` with it
  (``killed`` for Ctrl-C);
* **exit** (``atexit``) ends runs still open ``completed``, after sending their points.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import TracebackType

__all__ = ["Terminated", "install"]

_installed = False
_lock = threading.Lock()
#: what the open runs end as at exit: (status, error)
_outcome: tuple[str, str | None] = ("completed", None)
_end_all: Callable[[str, str | None], None] | None = None


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM (raised by mlrig's handler in the main thread)."""


def _on_sigterm(signum: int, _frame: object) -> None:
    raise Terminated("SIGTERM")


def _excepthook(
    previous: Callable[..., object],
) -> Callable[[type[BaseException], BaseException, TracebackType | None], None]:
    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        global _outcome
        from mlrig.tracking.run import _one_line

        if isinstance(exc, Terminated):
            previous(exc_type, exc, tb)
            if _end_all is not None:
                _end_all("killed", "SIGTERM")
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGTERM)  # die of it, as without mlrig
            return
        if isinstance(exc, KeyboardInterrupt):
            _outcome = ("killed", None)
        else:
            _outcome = ("failed", _one_line(exc))
        previous(exc_type, exc, tb)

    return hook


def _at_exit() -> None:
    if _end_all is not None:
        _end_all(*_outcome)


def install(end_all: Callable[[str, str | None], None]) -> None:
    """Install the handlers (once); ``end_all(status, error)`` ends every open run."""
    global _installed, _end_all
    with _lock:
        _end_all = end_all
        if _installed:
            return
        _installed = True
        atexit.register(_at_exit)
        sys.excepthook = _excepthook(sys.excepthook)
        if threading.current_thread() is threading.main_thread():
            try:
                if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
                    signal.signal(signal.SIGTERM, _on_sigterm)
            except (ValueError, OSError):  # not allowed here (an embedded interpreter)
                pass
