"""Keep native libraries' chatter (onnxruntime, TensorFlow) off the process's stderr.

Those libraries write straight to file descriptor 2 from C++, past ``sys.stderr``;
:func:`captured_stderr` points the descriptor at a temporary file for a block and hands
back what was written, so a failure can still say why.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

__all__ = ["captured_stderr", "plain_lines"]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# onnxruntime's log prefix: "2026-01-01 10:00:00.000 [E:onnxruntime:Default, file.cc:12 f] "
_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d [\d:.]+ \[[^\]]*\] ")


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Send file descriptor 2 to a temporary file for the block.

    Yields a list that holds, once the block is left, the text written meanwhile as its
    first item (the block may append more). Other threads' stderr output during the
    block is captured too, so keep the block short.
    """
    captured: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.insert(0, sink.read().decode(errors="replace"))


def plain_lines(texts: list[str]) -> list[str]:
    """The non-empty lines of ``texts`` without colour codes and log-line prefixes."""
    lines = (
        _LOG_PREFIX.sub("", _ANSI.sub("", line).strip())
        for text in texts
        for line in text.splitlines()
    )
    return [line for line in lines if line]
