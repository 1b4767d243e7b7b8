"""GET /explore and its assets through the handler: what is served, with which headers, and what is refused.

The page in a browser is tests/test_explorer.py.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from handler.api import explorer
from tests.events import api_event, lambda_context

ROOT = Path(__file__).resolve().parent.parent


def get(app, path: str, headers: dict[str, str] | None = None) -> dict:
    return app.lambda_handler(api_event("GET", path, headers=headers or {"Accept": "*/*"}), lambda_context())


def header(response: dict, name: str) -> str | None:
    values = response["multiValueHeaders"].get(name)
    return values[0] if values else None


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.script_text.append(data)


def test_the_page_is_served_with_a_policy_that_runs_only_this_origins_scripts(deployed_app):
    response = get(deployed_app, "/explore")
    assert response["statusCode"] == 200
    assert header(response, "Content-Type") == "text/html; charset=utf-8"
    policy = dict(part.strip().split(" ", 1) for part in header(response, "Content-Security-Policy").split(";"))
    assert policy["script-src"] == "'self'"  # no 'unsafe-inline', no 'unsafe-eval'
    assert policy["connect-src"] == "'self'"
    assert policy["default-src"] == "'none'"
    assert header(response, "X-Content-Type-Options") == "nosniff"
    # and the page keeps to it: no inline script or event handler, and only relative URLs (the stage prefix)
    page = _Tags()
    page.feed(response["body"])
    assert page.script_text == []
    scripts = [attrs["src"] for tag, attrs in page.tags if tag == "script"]
    assert scripts == [f"explore/plotly-cartesian-{explorer.PLOTLY_VERSION}.min.js", "explore/explorer.js"]
    for tag, attrs in page.tags:
        assert not [name for name in attrs if name.startswith("on")], (tag, attrs)
        for name in ("src", "href"):
            url = attrs.get(name)
            if url is not None and not url.startswith("data:"):
                assert not re.match(r"^(/|[a-z]+:)", url), url  # relative: /v1/explore -> /v1/explore/NAME
                assert url.removeprefix("explore/") in explorer.ASSETS, url


def test_each_asset_is_served_as_is_or_gzipped_with_its_type(deployed_app):
    for name, asset in explorer.ASSETS.items():
        raw = asset.path.read_bytes()
        plain = get(deployed_app, f"/explore/{name}")
        assert plain["statusCode"] == 200, name
        assert header(plain, "Content-Type") == asset.content_type
        assert plain["isBase64Encoded"] is False
        assert plain["body"].encode() == raw
        zipped = get(deployed_app, f"/explore/{name}", {"Accept-Encoding": "gzip, deflate, br"})
        assert (zipped["statusCode"], header(zipped, "Content-Encoding")) == (200, "gzip")
        assert zipped["isBase64Encoded"] is True  # API Gateway decodes it (the API's binary media types are */*)
        assert gzip.decompress(base64.b64decode(zipped["body"])) == raw
        # a browser's copy is revalidated by its ETag
        again = get(deployed_app, f"/explore/{name}", {"If-None-Match": header(plain, "ETag")})
        assert (again["statusCode"], again["body"]) == (304, None)
        # and "*" matches whatever is current (RFC 9110)
        assert get(deployed_app, f"/explore/{name}", {"If-None-Match": "*"})["statusCode"] == 304
    library = get(deployed_app, f"/explore/plotly-cartesian-{explorer.PLOTLY_VERSION}.min.js")
    assert "immutable" in header(library, "Cache-Control")  # its name carries its version


@pytest.mark.parametrize("path", ["/explore/app.py", "/explore/..%2Fapp.py", "/explore/index.html", "/explore/LICENSE"])
def test_anything_but_the_listed_assets_is_a_json_404(deployed_app, path: str):
    response = get(deployed_app, path)
    assert response["statusCode"] == 404
    assert json.loads(response["body"])["error"] == "not found"


def test_the_page_with_a_trailing_slash_goes_up_to_where_its_relative_urls_work(deployed_app):
    response = get(deployed_app, "/explore/")
    assert (response["statusCode"], header(response, "Location")) == (301, "../explore")


def test_head_answers_gets_headers_without_the_body(deployed_app):
    for path in ("/explore", "/explore/explorer.js"):
        full = get(deployed_app, path)
        head = deployed_app.lambda_handler(api_event("HEAD", path), lambda_context())
        assert (head["statusCode"], head["body"]) == (200, None)
        for name in ("Content-Type", "ETag", "Content-Security-Policy", "Cache-Control"):
            assert header(head, name) == header(full, name), name


def test_other_methods_are_refused_with_405(deployed_app):
    event = api_event("POST", "/explore", body={})
    response = deployed_app.lambda_handler(event, lambda_context())
    assert response["statusCode"] == 405
    assert header(response, "Allow") == "GET, HEAD"


def test_the_vendored_library_is_the_pinned_npm_package_with_its_licence():
    package = json.loads((explorer.PLOTLY_FOLDER / "package.json").read_text())
    assert (package["name"], package["version"], package["license"]) == (
        explorer.PLOTLY_PACKAGE,
        explorer.PLOTLY_VERSION,
        "MIT",
    )
    assert "MIT License" in (explorer.PLOTLY_FOLDER / "LICENSE").read_text()
    bundle = (explorer.PLOTLY_FOLDER / "plotly-cartesian.min.js").read_text()
    assert f"plotly.js (cartesian - minified) v{explorer.PLOTLY_VERSION}" in bundle[:300]
    # the explorer needs these trace types, which the basic bundle lacks (heatmap, contour)
    for trace in ("scatter", "bar", "contour", "heatmap"):
        assert f'moduleType:"trace",name:"{trace}"' in bundle, trace
