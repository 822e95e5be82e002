"""The web dashboard: static HTML, CSS and ES modules under ``static/`` served at ``/ui/`` by the API process itself.

There is no build step and nothing is fetched from elsewhere: the browser code talks to the same origin's ``/v1``
API with the key the person signs in with, exactly as any other client. The Content-Security-Policy below lets the
pages load and connect to this origin only, so an outside fetch would fail loudly instead of leaking.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC = Path(__file__).with_name("static")
POLICY = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
          "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


class _Assets(StaticFiles):
    async def get_response(self, path: str, scope: Scope):
        response = await super().get_response(path, scope)
        response.headers["content-security-policy"] = POLICY
        response.headers["x-content-type-options"] = "nosniff"
        response.headers["cache-control"] = "no-cache"  # revalidate, so an upgraded server serves its own pages
        return response


def mount(app: FastAPI) -> None:
    app.mount("/ui", _Assets(directory=STATIC, html=True), name="dashboard")

    @app.get("/", include_in_schema=False)
    def root():
        return RedirectResponse("/ui/")
