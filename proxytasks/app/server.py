"""The naming app's web server: Contract 3's JSON API and the page, on 127.0.0.1.

Starlette routes served by uvicorn. Handlers are plain functions, which Starlette runs
in its thread pool; the :class:`~proxytasks.app.state.Workspace` lock and the folder's
file lock keep concurrent requests (two tabs, two servers) from interleaving. Every
error a request can cause answers 4xx with ``{"error": message}`` and writes nothing.
The page's HTML, JavaScript and CSS come from this package (no CDN: it works offline).
"""
from __future__ import annotations

import io
import json
import logging
import socket
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import ProxytasksError
from . import actions
from .jobs import Updater, export
from .state import ApiError, Workspace

logger = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
MAX_BODY = 8 * 1024 * 1024
IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(folder: str | Path) -> Starlette:
    """The Starlette application over the working folder ``folder``."""
    ws = Workspace(folder)
    updater = Updater(ws)
    if ws.ann.named:  # the names of what was said so far, before the first Update
        updater.ws_name(ws.ann, ws.labels.copy(), ws.applied)

    def api(handler: Callable[..., Any], body: bool = False):
        async def endpoint(request: Request):
            try:
                if body:
                    out = await run_in_threadpool(handler, request, await _read_json(request))
                else:
                    out = await run_in_threadpool(handler, request)
                return out if isinstance(out, Response) else JSONResponse(out)
            except ApiError as e:
                return _error(e.status, e.message)
            except ProxytasksError as e:
                return _error(409, str(e))
        return endpoint

    async def _read_json(request: Request) -> Any:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise ApiError(413, f"the body is larger than {MAX_BODY} bytes")
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise ApiError(400, f"the body is not valid JSON: {type(e).__name__}") from None

    def people(request: Request):
        return ws.people()

    def person(request: Request):
        return ws.person(request.path_params["cluster"])

    def image(request: Request):
        i, path = ws.image_path(request.path_params["face_id"])
        if path is not None and path.suffix.lower() in IMAGE_TYPES and path.is_file():
            return FileResponse(path, media_type=IMAGE_TYPES[path.suffix.lower()],
                                headers={"Cache-Control": "max-age=3600"})
        return Response(_rendered(i), media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @lru_cache(maxsize=4096)
    def _rendered(i: int) -> bytes:
        from ..embed import load_face

        try:
            img = load_face(ws.manifest, ws.manifest[i]).convert("RGB")
        except ProxytasksError as e:
            raise ApiError(404, str(e)) from None
        img.thumbnail((256, 256))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        return buf.getvalue()

    def suggestions(request: Request):
        q = request.query_params
        try:
            n, pairs = int(q.get("n", 8)), int(q.get("pairs", 4))
        except ValueError:
            raise ApiError(400, "n and pairs must be whole numbers") from None
        if not (0 <= n <= 200 and 0 <= pairs <= 100):
            raise ApiError(400, "n must be 0..200 and pairs 0..100")
        return ws.suggestions(q.get("strategy", "clusters"), n, pairs)

    def post(fn):
        return lambda request, data: fn(ws, data)

    async def index(request: Request):
        return FileResponse(STATIC / "index.html", media_type="text/html",
                            headers={"Cache-Control": "no-cache"})

    async def not_found(request: Request, exc: HTTPException):
        if request.url.path.startswith("/api/"):
            return _error(exc.status_code, exc.detail if isinstance(exc.detail, str) else "not found")
        return Response(exc.detail or "not found", status_code=exc.status_code, media_type="text/plain")

    routes = [
        Route("/", index),
        Route("/api/people", api(people)),
        Route("/api/people/{cluster}", api(person)),
        Route("/api/faces/{face_id:path}/image", api(image)),
        Route("/api/name", api(post(actions.name), body=True), methods=["POST"]),
        Route("/api/not", api(post(actions.not_name), body=True), methods=["POST"]),
        Route("/api/merge", api(post(actions.merge), body=True), methods=["POST"]),
        Route("/api/split", api(post(actions.split), body=True), methods=["POST"]),
        Route("/api/answer", api(post(actions.answer), body=True), methods=["POST"]),
        Route("/api/undo", api(post(actions.undo), body=True), methods=["POST"]),
        Route("/api/update", api(lambda request: updater.job.view())),
        Route("/api/update", api(lambda request, data: JSONResponse(updater.start(data), status_code=202), body=True),
              methods=["POST"]),
        Route("/api/export", api(lambda request, data: export(ws, updater, data), body=True), methods=["POST"]),
        Route("/api/suggestions", api(suggestions)),
        Route("/api/history", api(lambda request: ws.history())),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found})
    app.state.workspace, app.state.updater = ws, updater
    return app


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening socket on ``host:port`` (0: a free port)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ProxytasksError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port, "
                              f"or 0 for a free one") from None
    sock.listen(128)
    return sock


def serve(folder: str | Path, host: str = "127.0.0.1", port: int = 0, echo: Callable[[str], None] = print) -> None:
    """Serve the app over ``folder`` until interrupted; prints the URL first."""
    app = create_app(folder)
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    echo(f"proxytasks app: {Path(folder)} at http://{shown}:{bound}/ (Ctrl-C stops it; every action is "
         f"already saved in {Path(folder) / 'app' / 'rounds'})")
    sys.stdout.flush()
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])
