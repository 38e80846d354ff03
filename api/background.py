"""Background loops that run in a thread while the app serves (a router's lifespan)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI

#: how long shutting down waits for a loop to notice its stop event
JOIN_SECONDS = 10.0


def thread_lifespan(
    target: Callable[[Any, threading.Event], None], *, name: str
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """A lifespan that runs ``target(platform, stop)`` in a daemon thread named ``name``
    while the app serves (nothing for an app without a platform), and sets ``stop`` and
    joins the thread when it shuts down."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        platform = getattr(app.state, "platform", None)
        stop = threading.Event()
        thread = None
        if platform is not None:
            thread = threading.Thread(target=target, args=(platform, stop), name=name, daemon=True)
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if thread is not None:
                thread.join(JOIN_SECONDS)

    return lifespan
