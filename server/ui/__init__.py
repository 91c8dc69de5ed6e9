"""The browser playground at ``/ui``: static files shipped as package data, no build step.

The page is plain HTML + ES modules (``static/``) that talk to the same public API as any client;
serving it needs no key, while every API call it makes carries the key the user types in (kept in
the tab's ``sessionStorage`` at most, never sent anywhere but the ``Authorization`` header).
``/ui`` redirects to ``/ui/`` with its query string intact, so shared links keep their state.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"


def mount_ui(app: FastAPI) -> None:
    """Serve ``static/`` at ``/ui/`` (``index.html`` for the folder) and redirect ``/ui`` there."""

    @app.get("/ui", include_in_schema=False)
    async def ui_root(request: Request) -> RedirectResponse:
        query = request.url.query
        return RedirectResponse(url="/ui/" + (f"?{query}" if query else ""), status_code=307)

    app.mount("/ui", StaticFiles(directory=STATIC, html=True), name="ui")
