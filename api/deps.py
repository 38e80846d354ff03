"""FastAPI dependencies shared by the routers (``Annotated`` aliases)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from mlrig.platform import Platform


def get_platform(request: Request) -> Platform:
    """The platform the app was built for."""
    return request.app.state.platform


PlatformDep = Annotated[Platform, Depends(get_platform)]
