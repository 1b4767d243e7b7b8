"""The model explorer: one HTML page and its assets, served by a function of its own (handler.explorer_app).

    GET /explore            the page (handler/explorer/index.html); HEAD as well, for every route
    GET /explore/{asset}    its script, its stylesheet, the vendored chart library and that library's licence
    GET /models/{name}/explore  the same page on one model of the registry (`name` or `name@alias`)

The page holds no data: it draws what the API answers (GET /model, POST /predict, POST /sensitivity), calling
it from the browser with the caller's key. So the template serves these two routes without the API key or IAM
auth that every other route needs, and, being open, from their own small function (ExplorerFunction: GET and HEAD
only, its own throttle and concurrency), so that anonymous requests never spend the keyed function's. Assets are
a fixed list read from the package once per environment: a name outside it is a 404, never a path on disk. No
inline script anywhere (the Content-Security-Policy allows scripts from this origin only), and every URL in the
page is relative, so it works behind API Gateway's stage prefix (`/v1/explore`) as on `make serve`.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import quote

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import Router

from handler.api.errors import RequestError

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
    levels_up: int = 0  # served this many path segments below /explore's folder: its `explore/` URLs climb as many


# A model's page is /models/NAME/explore: the page's files are /explore/FILE, two segments up. Its script reads the
# model's name from the page's path. The rules of handler.registry.names (not imported: this function's package
# holds no registry code); a name outside them has no page.
MODEL_PAGE_LEVELS = 2
MODEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]{0,63}(@[a-z][a-z0-9_\-]{0,31})?")


ASSETS: dict[str, Asset] = {
    "explorer.js": Asset(FOLDER / "explorer.js", "text/javascript; charset=utf-8", REVALIDATE),
    "explorer.css": Asset(FOLDER / "explorer.css", "text/css; charset=utf-8", REVALIDATE),
    f"plotly-cartesian-{PLOTLY_VERSION}.min.js": Asset(
        PLOTLY_FOLDER / "plotly-cartesian.min.js", "text/javascript; charset=utf-8", IMMUTABLE
    ),
    "plotly-LICENSE.txt": Asset(PLOTLY_FOLDER / "LICENSE", "text/plain; charset=utf-8", REVALIDATE),
}
PAGE = Asset(FOLDER / "index.html", "text/html; charset=utf-8", REVALIDATE)
MODEL_PAGE = Asset(FOLDER / "index.html", "text/html; charset=utf-8", REVALIDATE, MODEL_PAGE_LEVELS)


@dataclass(frozen=True)
class Loaded:
    """An asset's bytes, gzipped once (the library is 1.5 MB, 0.5 MB gzipped), and each representation's ETag.

    The two bodies are different representations, so they carry different strong validators (RFC 9110, 8.8.3):
    a cache holding the gzipped bytes must not revalidate them as the plain ones.
    """

    raw: bytes
    gzipped: bytes
    etag: str
    gzip_etag: str


@cache
def _load(asset: Asset) -> Loaded:
    raw = asset.path.read_bytes()
    if asset.levels_up:
        raw = raw.replace(b'="explore/', b'="' + b"../" * asset.levels_up + b"explore/")
    digest = hashlib.sha256(raw).hexdigest()[:32]
    return Loaded(raw, gzip.compress(raw, compresslevel=9, mtime=0), f'"{digest}"', f'"{digest}-gzip"')


def _serve(asset: Asset) -> Response:
    loaded = _load(asset)
    event = router.current_event
    zipped = accepts_gzip(event.headers.get("accept-encoding"))  # headers: case-insensitive
    etag = loaded.gzip_etag if zipped else loaded.etag
    headers = {**SECURITY_HEADERS, "Cache-Control": asset.cache_control, "ETag": etag, "Vary": "Accept-Encoding"}
    if zipped:
        headers["Content-Encoding"] = "gzip"
    matches = _header_values(event.headers.get("if-none-match"))
    if etag in matches or "*" in matches:  # "*": any current representation (RFC 9110, 13.1.2)
        return Response(304, None, None, headers)
    if event.http_method == "HEAD":  # GET's headers, without the body
        return Response(200, asset.content_type, None, headers)
    if zipped:  # bytes: Powertools answers them base64-encoded, API Gateway decodes them
        return Response(200, asset.content_type, loaded.gzipped, headers)
    return Response(200, asset.content_type, loaded.raw.decode(), headers)


# Accept-Encoding is short (API Gateway caps a request's headers at 10 KB); only its first codings are read anyway.
MAX_CODINGS = 32
QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")  # RFC 9110, 12.4.2


def accepts_gzip(header: str | None) -> bool:
    """Whether to answer gzipped: the client gives gzip a q-value above 0 and no lower than identity's (RFC 9110,
    12.5.3). gzip not listed takes `*`'s q-value (0 without one); identity not listed is acceptable unless `*;q=0`.
    A malformed q-value counts as 0: the plain body is always a safe answer."""
    weights: dict[str, float] = {}
    for item in (header or "").split(",", MAX_CODINGS)[:MAX_CODINGS]:
        coding, *parameters = (part.strip() for part in item.split(";"))
        weight = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                weight = float(value) if QVALUE.fullmatch(value.strip()) else 0.0
        coding = coding.lower()
        if coding:
            weights.setdefault("gzip" if coding == "x-gzip" else coding, weight)
    star = weights.get("*")
    gzip_weight = weights.get("gzip", 0.0 if star is None else star)
    identity_weight = weights.get("identity", 0.0 if star == 0.0 else 1.0)
    return gzip_weight > 0.0 and gzip_weight >= identity_weight


def _header_values(header: str | None) -> set[str]:
    return {value.strip().removeprefix("W/") for value in (header or "").split(",")}


def error_response(
    status: int, error: str, details: list[tuple[str, str]], headers: dict[str, str] | None = None
) -> Response:
    """A JSON error with the page's security headers (nosniff: a browser must not read it as HTML); no body to HEAD."""
    body = "" if router.current_event.http_method == "HEAD" else RequestError(status, error, details).body()
    return Response(status, content_types.APPLICATION_JSON, body, {**SECURITY_HEADERS, **(headers or {})})


def quoted(name: str, limit: int = 60) -> str:
    """A caller's path segment as an error message may quote it: percent-encoded, so no markup or quote survives."""
    text = quote(name[:limit], safe="._-~")
    return f"'{text}'" + ("..." if len(name) > limit else "")


@router.route("/explore", method=["GET", "HEAD"])
def page() -> Response:
    if router.current_event.path.endswith("/"):  # /explore/ (the resolver routes it here): its relative URLs would
        headers = {**SECURITY_HEADERS, "Location": "../explore", "Cache-Control": REVALIDATE}  # miss, so go up
        return Response(301, None, None, headers)
    return _serve(PAGE)


@router.route("/explore/<asset>", method=["GET", "HEAD"])
def asset(asset: str) -> Response:
    found = ASSETS.get(asset)
    if found is None:
        message = f"no asset {quoted(asset)}; the page is GET /explore, its assets {', '.join(ASSETS)}"
        return error_response(404, "not found", [("asset", message)])
    return _serve(found)


@router.route("/models/<name>/explore", method=["GET", "HEAD"])
def model_page(name: str) -> Response:
    if not MODEL_NAME.fullmatch(name):
        message = f"no model page for {quoted(name)}: a model's name (64 at most), or name@alias"
        return error_response(404, "not found", [("model", message)])
    if router.current_event.path.endswith("/"):  # as /explore/: its relative URLs would miss
        headers = {**SECURITY_HEADERS, "Location": "../explore", "Cache-Control": REVALIDATE}
        return Response(301, None, None, headers)
    return _serve(MODEL_PAGE)
