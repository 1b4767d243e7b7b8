"""The model explorer: one HTML page and its assets, served by the function itself (a Router in the app's resolver).

    GET /explore            the page (handler/explorer/index.html); HEAD as well, for both routes
    GET /explore/{asset}    its script, its stylesheet, the vendored chart library and that library's licence

The page holds no data: it draws what the API answers (GET /model, POST /predict, POST /sensitivity), calling
it from the browser with the caller's key. So the template serves these two routes without the API key or IAM
auth that every other route needs. Assets are a fixed list read from the package once per environment: a
name outside it is a 404, never a path on disk. No inline script anywhere (the Content-Security-Policy allows
scripts from this origin only), and every URL in the page is relative, so it works behind API Gateway's
stage prefix (`/v1/explore`) as on `make serve`.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router

from handler.api.errors import RequestError, brief

router = Router()
FOLDER = Path(__file__).resolve().parent.parent / "explorer"
# The chart library, vendored as npm packed it (`npm pack plotly.js-cartesian-dist-min@4.1.1`): its LICENSE,
# README and package.json beside it. Plotly's cartesian bundle: scatter (slices and their bands), heatmap and
# contour (the 2-D view), bar with error bars (Sobol' indices); the basic bundle has no heatmap or contour.
PLOTLY_PACKAGE = "plotly.js-cartesian-dist-min"
PLOTLY_VERSION = "4.1.1"
PLOTLY_FOLDER = FOLDER / "vendor" / PLOTLY_PACKAGE
# scripts: this origin only, no inline script or handler; styles: Plotly sets style attributes and inserts its
# own rules, which 'unsafe-inline' (for styles alone) allows; images: Plotly draws heat maps as data: URLs.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# The library's name carries its version, so browsers may keep it; the page and its own files are revalidated.
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"


@dataclass(frozen=True)
class Asset:
    path: Path
    content_type: str
    cache_control: str


ASSETS: dict[str, Asset] = {
    "explorer.js": Asset(FOLDER / "explorer.js", "text/javascript; charset=utf-8", REVALIDATE),
    "explorer.css": Asset(FOLDER / "explorer.css", "text/css; charset=utf-8", REVALIDATE),
    f"plotly-cartesian-{PLOTLY_VERSION}.min.js": Asset(
        PLOTLY_FOLDER / "plotly-cartesian.min.js", "text/javascript; charset=utf-8", IMMUTABLE
    ),
    "plotly-LICENSE.txt": Asset(PLOTLY_FOLDER / "LICENSE", "text/plain; charset=utf-8", REVALIDATE),
}
PAGE = Asset(FOLDER / "index.html", "text/html; charset=utf-8", REVALIDATE)


@dataclass(frozen=True)
class Loaded:
    """An asset's bytes, gzipped once (the library is 1.5 MB, 0.5 MB gzipped), and its ETag."""

    raw: bytes
    gzipped: bytes
    etag: str


@cache
def _load(asset: Asset) -> Loaded:
    raw = asset.path.read_bytes()
    return Loaded(raw, gzip.compress(raw, compresslevel=9, mtime=0), f'"{hashlib.sha256(raw).hexdigest()[:32]}"')


def _serve(asset: Asset) -> Response:
    loaded = _load(asset)
    event = router.current_event
    headers = {**SECURITY_HEADERS, "Cache-Control": asset.cache_control, "ETag": loaded.etag, "Vary": "Accept-Encoding"}
    matches = _header_values(event.headers.get("if-none-match"))  # headers: case-insensitive
    if loaded.etag in matches or "*" in matches:  # "*": any current representation (RFC 9110, 13.1.2)
        return Response(304, None, None, headers)
    if event.http_method == "HEAD":  # GET's headers, without the body
        return Response(200, asset.content_type, None, headers)
    accept = event.headers.get("accept-encoding") or ""
    if "gzip" in accept.lower():  # bytes: Powertools answers them base64-encoded, API Gateway decodes them
        return Response(200, asset.content_type, loaded.gzipped, {**headers, "Content-Encoding": "gzip"})
    return Response(200, asset.content_type, loaded.raw.decode(), headers)


def _header_values(header: str | None) -> set[str]:
    return {value.strip().removeprefix("W/") for value in (header or "").split(",")}


@router.route("/explore", method=["GET", "HEAD"])
def page() -> Response:
    if router.current_event.path.endswith("/"):  # /explore/ (the resolver routes it here): its relative URLs would
        return Response(301, None, None, {"Location": "../explore", "Cache-Control": REVALIDATE})  # miss, so go up
    return _serve(PAGE)


@router.route("/explore/<asset>", method=["GET", "HEAD"])
def asset(asset: str) -> Response:
    found = ASSETS.get(asset)
    if found is None:
        raise RequestError(404, "not found", [("asset", f"no asset {brief(asset)}; the page is GET /explore")])
    return _serve(found)
