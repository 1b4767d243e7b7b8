"""GET /explore and its assets through the explorer function's handler (handler.explorer_app): what is served, with
which headers, and what is refused.

The page in a browser is tests/test_explorer.py; the function's place in the template, tests/test_template.py.
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


@pytest.fixture
def explorer_app():
    from handler import explorer_app

    return explorer_app


def get(app, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> dict:
    event = api_event(method, path, headers=headers or {"Accept": "*/*"})
    return app.lambda_handler(event, lambda_context("ExplorerFunction"))


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


def test_the_page_is_served_with_a_policy_that_runs_only_this_origins_scripts(explorer_app):
    response = get(explorer_app, "/explore")
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


def test_each_asset_is_served_as_is_or_gzipped_with_its_type(explorer_app):
    for name, asset in explorer.ASSETS.items():
        raw = asset.path.read_bytes()
        plain = get(explorer_app, f"/explore/{name}")
        assert plain["statusCode"] == 200, name
        assert header(plain, "Content-Type") == asset.content_type
        assert plain["isBase64Encoded"] is False
        assert plain["body"].encode() == raw
        zipped = get(explorer_app, f"/explore/{name}", {"Accept-Encoding": "gzip, deflate, br"})
        assert (zipped["statusCode"], header(zipped, "Content-Encoding")) == (200, "gzip")
        assert zipped["isBase64Encoded"] is True  # API Gateway decodes it (the API's binary media types are */*)
        assert gzip.decompress(base64.b64decode(zipped["body"])) == raw
        # a browser's copy is revalidated by its ETag
        again = get(explorer_app, f"/explore/{name}", {"If-None-Match": header(plain, "ETag")})
        assert (again["statusCode"], again["body"]) == (304, None)
        # and "*" matches whatever is current (RFC 9110)
        assert get(explorer_app, f"/explore/{name}", {"If-None-Match": "*"})["statusCode"] == 304
    library = get(explorer_app, f"/explore/plotly-cartesian-{explorer.PLOTLY_VERSION}.min.js")
    assert "immutable" in header(library, "Cache-Control")  # its name carries its version


@pytest.mark.parametrize("path", ["/explore/app.py", "/explore/..%2Fapp.py", "/explore/index.html", "/explore/LICENSE"])
def test_anything_but_the_listed_assets_is_a_json_404(explorer_app, path: str):
    response = get(explorer_app, path)
    assert response["statusCode"] == 404
    assert json.loads(response["body"])["error"] == "not found"


def test_the_page_with_a_trailing_slash_goes_up_to_where_its_relative_urls_work(explorer_app):
    response = get(explorer_app, "/explore/")
    assert (response["statusCode"], header(response, "Location")) == (301, "../explore")


def test_head_answers_gets_headers_without_the_body(explorer_app):
    for path in ("/explore", "/explore/explorer.js"):
        full = get(explorer_app, path)
        head = get(explorer_app, path, method="HEAD")
        assert (head["statusCode"], head["body"]) == (200, None)
        for name in ("Content-Type", "ETag", "Content-Security-Policy", "Cache-Control"):
            assert header(head, name) == header(full, name), name


def test_other_methods_are_refused_with_405(explorer_app):
    event = api_event("POST", "/explore", body={})
    response = explorer_app.lambda_handler(event, lambda_context())
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


@pytest.mark.parametrize(
    ("accept_encoding", "gzipped"),
    [
        ("gzip;q=0, identity", False),  # gzip refused outright
        ("identity, gzip;q=0", False),
        ("gzip;q=0.5, identity", False),  # identity preferred
        ("GZIP;Q=0.000", False),
        ("gzip;q=2", False),  # not a q-value: the plain body is always safe
        ("*;q=0, identity;q=0.1", False),
        ("identity", False),
        ("", False),
        ("gzip", True),
        ("deflate, gzip;q=1.0, *;q=0.5", True),
        ("*", True),
        ("x-gzip", True),
        ("gzip;q=0.5, identity;q=0.4", True),
    ],
)
def test_gzip_is_sent_only_where_its_q_value_prefers_it(explorer_app, accept_encoding: str, gzipped: bool):
    # when
    response = get(explorer_app, "/explore/explorer.js", {"Accept-Encoding": accept_encoding})
    # then
    assert response["statusCode"] == 200
    assert (header(response, "Content-Encoding") == "gzip") is gzipped
    assert response["isBase64Encoded"] is gzipped
    raw = explorer.ASSETS["explorer.js"].path.read_bytes()
    body = gzip.decompress(base64.b64decode(response["body"])) if gzipped else response["body"].encode()
    assert body == raw


def test_the_gzipped_and_plain_bodies_have_their_own_etags_and_each_revalidates_only_itself(explorer_app):
    # given both representations of each file
    for path in ("/explore", *(f"/explore/{name}" for name in explorer.ASSETS)):
        plain = get(explorer_app, path)
        zipped = get(explorer_app, path, {"Accept-Encoding": "gzip"})
        plain_tag, zipped_tag = header(plain, "ETag"), header(zipped, "ETag")
        # then their strong validators differ, and the answer says it varies with Accept-Encoding
        assert plain_tag != zipped_tag
        assert re.fullmatch(r'"[0-9a-f]{32}"', plain_tag)
        assert zipped_tag == plain_tag[:-1] + '-gzip"'
        for response in (plain, zipped):
            assert header(response, "Vary") == "Accept-Encoding"
        # and a client holding one representation is not told it is current for the other
        assert get(explorer_app, path, {"If-None-Match": zipped_tag})["statusCode"] == 200
        assert get(explorer_app, path, {"Accept-Encoding": "gzip", "If-None-Match": plain_tag})["statusCode"] == 200
        mine = get(explorer_app, path, {"Accept-Encoding": "gzip", "If-None-Match": f"W/{zipped_tag}"})
        assert (mine["statusCode"], header(mine, "ETag"), header(mine, "Vary")) == (304, zipped_tag, "Accept-Encoding")


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(
    ("path", "status"),
    [("/explore", 200), ("/explore/explorer.css", 200), ("/explore/", 301), ("/explore/nothing.js", 404),
     ("/explore/a/b", 404), ("/elsewhere", 404)],
)  # fmt: skip
def test_every_answer_says_nosniff_and_head_never_has_a_body(explorer_app, method: str, path: str, status: int):
    # when
    response = get(explorer_app, path, method=method)
    # then
    assert response["statusCode"] == status
    assert header(response, "X-Content-Type-Options") == "nosniff"
    assert header(response, "Content-Security-Policy") == explorer.CONTENT_SECURITY_POLICY
    if method == "HEAD":
        assert response["body"] in (None, "")
    elif status == 404:
        assert header(response, "Content-Type") == "application/json"
        assert json.loads(response["body"])["error"] == "not found"


def test_other_methods_and_failures_say_nosniff_too(explorer_app, monkeypatch):
    # given a POST, and a file that cannot be read
    refused = explorer_app.lambda_handler(api_event("POST", "/explore", body={}), lambda_context())
    monkeypatch.setattr(explorer, "_load", lambda asset: (_ for _ in ()).throw(OSError("gone")))
    failed = get(explorer_app, "/explore/explorer.js")
    # then
    assert (refused["statusCode"], failed["statusCode"]) == (405, 500)
    for response in (refused, failed):
        assert header(response, "X-Content-Type-Options") == "nosniff"
        assert "gone" not in response["body"]


@pytest.mark.parametrize("name", ["<script>alert(1)<%2Fscript>.js", 'x"onload="y', "%3Cimg src=x onerror=y%3E"])
def test_a_404_never_echoes_a_name_raw(explorer_app, name: str):
    # when
    response = get(explorer_app, f"/explore/{name}")
    # then the name is quoted percent-encoded: no markup or quote of the caller's reaches the body
    assert response["statusCode"] == 404
    [detail] = json.loads(response["body"])["details"]
    assert not set('<>"') & set(detail["message"]), detail["message"]
    if detail["field"] == "asset":  # a name the route takes (a quote is not one: the route does not match)
        assert "explorer.js" in detail["message"], "it names the assets there are"


# --- a model's page: /models/{name}/explore -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["plant", "plant@live", "_my-model_2@canary-1"])
def test_a_models_page_is_the_page_with_its_files_named_from_two_levels_up(explorer_app, name: str):
    # when a model's page is asked for, by name or name@alias
    response = get(explorer_app, f"/models/{name}/explore")
    plain = get(explorer_app, "/explore")
    # then it is the packaged model's page, its relative URLs climbing to /explore's files (/v1/models/N/explore
    # -> /v1/explore/FILE), with the same policy; the script reads the model's name from the page's path
    assert response["statusCode"] == 200
    assert header(response, "Content-Security-Policy") == explorer.CONTENT_SECURITY_POLICY
    assert response["body"] == plain["body"].replace('="explore/', '="../../explore/')
    page = _Tags()
    page.feed(response["body"])
    urls = [attrs.get(n) for _, attrs in page.tags for n in ("src", "href") if attrs.get(n)]
    climbing = [url for url in urls if not url.startswith("data:")]
    assert climbing
    assert all(
        url.startswith("../../explore/") and url.removeprefix("../../explore/") in explorer.ASSETS for url in climbing
    )
    # and its ETag is its own: a cache never takes one page for the other
    assert header(response, "ETag") != header(plain, "ETag")
    head = get(explorer_app, f"/models/{name}/explore", method="HEAD")
    assert (head["statusCode"], head["body"], header(head, "ETag")) == (200, None, header(response, "ETag"))


@pytest.mark.parametrize(
    "name", ["9lives", "plant@Live", "a" * 65, "plant@", "pl%20ant", "%3Cscript%3E", "plant@live@beta", "..%2F.."]
)
def test_a_name_outside_the_registrys_rules_has_no_page(explorer_app, name: str):
    response = get(explorer_app, f"/models/{name}/explore")
    assert response["statusCode"] == 404
    [detail] = json.loads(response["body"])["details"]
    assert detail["field"] == "model"
    assert not set('<>"') & set(detail["message"]), detail["message"]


def test_the_model_pages_name_rule_is_the_registrys():
    from handler.gp.artifact import NAME_PATTERN
    from handler.registry.names import ALIAS_PATTERN

    name = NAME_PATTERN.pattern.removeprefix("^").removesuffix("$")
    assert explorer.MODEL_NAME.pattern == f"{name}(@{ALIAS_PATTERN.pattern})?"


def test_a_models_page_with_a_trailing_slash_goes_up_too(explorer_app):
    response = get(explorer_app, "/models/plant/explore/")
    assert (response["statusCode"], header(response, "Location")) == (301, "../explore")
