"""The labelling web app (Starlette): the page, and a small JSON API behind it.

    GET  /                 the page (static HTML, JS and CSS: no build step, nothing from the network)
    GET  /api/session      who is ranking (a token's name, --annotator, or none yet) and the page's settings
    GET  /api/next         the next item for ?annotator=NAME: prompt, K responses, how many remain
    POST /api/rankings     {"item", "annotator", "order": [[best...], ..., [worst...]], "seconds"}

`order` lists the response indices from best to worst in tiers: one index per tier, or several when
they tie (only with --ties). The reply comes after the line is on disk. Bad input gets a 4xx with a
JSON {"error": message}; a failure of our own a 500 with one line, the traceback only in the log.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from rlhf.label.config import LabelConfig
from rlhf.label.items import ItemQueue
from rlhf.label.store import RankingStore

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
MAX_BODY_BYTES = 64 * 1024
ANNOTATOR_NAME = re.compile(r"[\w.@ -]{1,64}")
SECURITY_HEADERS = {
    # No inline script and nothing from elsewhere: even a response that slipped past escaping could not run.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def build_app(config: LabelConfig, queue: ItemQueue, store: RankingStore, tokens: dict[str, str]) -> Starlette:
    """The app over `queue` and `store`; `tokens` (token -> annotator name) turns on bearer-token auth."""

    def annotator_of(request: Request, given) -> str:
        if tokens:
            return _token_name(request, tokens)
        if config.annotator:
            return config.annotator
        name = given.strip() if isinstance(given, str) else ""
        if not ANNOTATOR_NAME.fullmatch(name):
            raise ApiError(400, "give an annotator name: 1-64 letters, digits, spaces or . @ - _")
        return name

    async def page(request: Request):
        return FileResponse(STATIC / "index.html", headers=SECURITY_HEADERS)

    async def session(request: Request):
        name = _token_name(request, tokens) if tokens else (config.annotator or None)
        return JSONResponse({"annotator": name, "auth": bool(tokens), "ties": config.ties}, headers=SECURITY_HEADERS)

    async def next_item(request: Request):
        annotator = annotator_of(request, request.query_params.get("annotator"))
        item = await run_in_threadpool(queue.next_for, annotator)
        ranked = sum(1 for i in queue.items if store.has(i, annotator))
        if item is None:
            return JSONResponse({"done": True, "ranked": ranked}, headers=SECURITY_HEADERS)
        body = {
            "done": False,
            "item": item.id,
            "prompt": item.prompt,
            "responses": item.responses,
            "ranked": ranked,
            "remaining": queue.remaining_for(annotator),
        }
        return JSONResponse(body, headers=SECURITY_HEADERS)

    async def submit(request: Request):
        body = await _json_body(request)
        annotator = annotator_of(request, body.get("annotator"))
        item = queue.items.get(body.get("item"))  # type: ignore[arg-type]
        if item is None:
            raise ApiError(404, f"no item {body.get('item')!r} in this session")
        if item.responses is None:
            raise ApiError(409, "this item's responses were never sampled in this session; reload the page")
        tiers = _tiers(body.get("order"), len(item.responses), config.ties)
        seconds = body.get("seconds")
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not 0 <= seconds < 1e7:
            raise ApiError(400, '"seconds" must be a number of seconds spent on the item, >= 0')
        row = ranking_row(item, annotator, tiers, float(seconds))
        stored = await run_in_threadpool(store.append, row)
        return JSONResponse({"stored": stored, "duplicate": not stored}, headers=SECURITY_HEADERS)

    async def api_error(request: Request, err: ApiError):
        return JSONResponse({"error": err.message}, status_code=err.status, headers=SECURITY_HEADERS)

    async def http_error(request: Request, err: HTTPException):
        return JSONResponse({"error": err.detail}, status_code=err.status_code, headers=SECURITY_HEADERS)

    async def internal_error(request: Request, err: Exception):
        log.error("%s %s failed", request.method, request.url.path, exc_info=err)
        return JSONResponse({"error": f"internal error: {type(err).__name__}: {err}"}, status_code=500)

    routes = [
        Route("/", page),
        Route("/favicon.ico", lambda request: Response(status_code=204)),  # none, and no 404 in the console
        Route("/api/session", session),
        Route("/api/next", next_item),
        Route("/api/rankings", submit, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    handlers = {ApiError: api_error, HTTPException: http_error, Exception: internal_error}
    return Starlette(routes=routes, exception_handlers=handlers)  # type: ignore[arg-type]


def ranking_row(item, annotator: str, tiers: list[list[int]], seconds: float) -> dict:
    """The line `rlhf train rm` reads ({"prompt", "responses", "ranking"}, indices best first), with tied
    groups, who ranked it, how long it took and where the responses came from."""
    row = {"prompt": item.prompt, "responses": item.responses, "ranking": [i for tier in tiers for i in tier]}
    if ties := [tier for tier in tiers if len(tier) > 1]:
        row["ties"] = ties
    row |= {"annotator": annotator, "item": item.id, "seconds": round(seconds, 3)}
    row |= item.provenance
    row["submitted_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return row


def _tiers(order, k: int, ties_allowed: bool) -> list[list[int]]:
    """`order` checked: tiers (lists of response indices) that hold each of 0..k-1 exactly once."""
    shape_ok = isinstance(order, list) and all(
        isinstance(t, list) and t and all(isinstance(i, int) and not isinstance(i, bool) for i in t) for t in order
    )
    if not shape_ok or sorted(i for t in order for i in t) != list(range(k)):
        raise ApiError(400, f'"order" must be a list of tiers, best first, that hold each response 0..{k - 1} once')
    if not ties_allowed and any(len(t) > 1 for t in order):
        raise ApiError(400, "ties are off in this session (start with --ties to allow them)")
    return order


async def _json_body(request: Request) -> dict:
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, f"request body over {MAX_BODY_BYTES} bytes")
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, f"request body over {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the body is not valid JSON ({err})") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


def _token_name(request: Request, tokens: dict[str, str]) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "this session needs a token: Authorization: Bearer TOKEN")
    for known, name in tokens.items():
        if hmac.compare_digest(known.encode(), token.strip().encode()):
            return name
    raise ApiError(401, "unknown token")
