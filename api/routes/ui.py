"""The web dashboard under ``/ui``: static files from ``api/ui`` (plain ES modules, no build step).

The pages hold no data of their own: the browser asks the same authenticated ``/v1`` API as every
client, with the key the user typed (kept in sessionStorage). These routes need no key, are not
part of the OpenAPI document (they are not in the endpoint tables), and every answer carries a
Content-Security-Policy that allows only the dashboard's own scripts, styles and API calls.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

UI_DIR = Path(__file__).resolve().parent.parent / "ui"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

# no inline script or style, no eval, no other origin; artifact downloads are navigations to
# presigned URLs, which connect-src does not govern
CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


def ui_file(name: str) -> Path | None:
    """The static file ``name`` names, or None: only files directly in ``api/ui`` of a known type."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    path = UI_DIR / name
    if path.suffix not in CONTENT_TYPES or not path.is_file():
        return None
    return path


def _answer(path: Path) -> web.Response:
    return web.Response(
        body=path.read_bytes(),
        headers={"Content-Type": CONTENT_TYPES[path.suffix], **SECURITY_HEADERS},
    )


async def index(request: web.Request) -> web.Response:
    """The single page; its script routes by the URL's fragment (``#/jobs/…``)."""
    return _answer(UI_DIR / "index.html")


async def redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui/")


async def static(request: web.Request) -> web.Response:
    path = ui_file(request.match_info["name"])
    if path is None:
        raise web.HTTPNotFound()
    return _answer(path)


def add_ui_routes(app: web.Application) -> None:
    app.router.add_get("/ui", redirect)
    app.router.add_get("/ui/", index)
    app.router.add_get("/ui/{name}", static)
