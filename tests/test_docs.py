"""The documentation: the site builds with `mkdocs build --strict` (a broken link or anchor fails it), the README's
links into it resolve, and every curl example in README.md and docs/*.md is answered as shown.

An example is a ```console block with `$ ` commands, or a ```bash block, that runs curl; each curl command is
followed by the answer it shows. The commands run in order in one folder with `$URL` the local server's base URL
(as are http://127.0.0.1:3000 and http://localhost:3000, `make serve`'s) and `$KEY` empty (the server asks for no
key). A block that can only run deployed (the aws CLI, real keys, a job's `$ID`) is preceded by
`<!-- docs-test: skip: why -->`: pytest lists it as skipped with that reason; any other block is run."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from handler.gp.artifact import manifest_path_for
from tests.conftest import DEPLOYED_MODEL

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP_MARKER = re.compile(r"<!-- docs-test: skip: (?P<reason>\S[^>]*?) -->")
LOCAL_URLS = ("http://127.0.0.1:3000", "http://localhost:3000")


# --- Examples in the pages ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    text: str
    answer: str | None  # the answer shown under it, if any


@dataclass(frozen=True)
class Example:
    page: Path
    line: int
    commands: tuple[Command, ...]
    skip_reason: str | None

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def complete(command: str) -> bool:
    """Whether a shell command is whole (quotes closed, no trailing backslash), as a reader of the page sees it."""
    if command.rstrip().endswith("\\"):
        return False
    try:
        shlex.split(command, comments=True)
    except ValueError:
        return False
    return True


def console_commands(lines: list[str]) -> Iterator[Command]:
    """`$ command` (continued until complete), then every line up to the next `$ ` as its answer."""
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            i += 1
            continue
        text = lines[i][2:]
        i += 1
        while not complete(text) and i < len(lines):
            text += "\n" + lines[i]
            i += 1
        answer = []
        while i < len(lines) and not lines[i].startswith("$ "):
            answer.append(lines[i])
            i += 1
        shown = "\n".join(answer).strip()
        yield Command(text, shown or None)


def bash_commands(lines: list[str]) -> Iterator[Command]:
    """Commands (continued until complete), each followed by its answer: the lines after it that start a JSON value
    or continue one (indented), up to a blank line, a comment or the next command."""
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            i += 1
            continue
        text = line
        i += 1
        while not complete(text) and i < len(lines):
            text += "\n" + lines[i]
            i += 1
        answer: list[str] = []
        while i < len(lines) and lines[i].strip() and not lines[i].lstrip().startswith("#"):
            if not (lines[i][0] in '{["' or (answer and lines[i][0].isspace())):
                break
            answer.append(lines[i])
            i += 1
        yield Command(text, "\n".join(answer) or None)


def examples_in(page: Path) -> Iterator[Example]:
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        indent, language, start = fence[1], fence[2], i
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        body = [line.removeprefix(indent) for line in lines[i + 1 : end]]
        i = end + 1
        if language not in ("console", "bash"):
            continue
        commands = tuple((console_commands if language == "console" else bash_commands)(body))
        if not any(re.search(r"(^|[\s;&|(])curl\s", c.text) for c in commands):
            continue
        previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = SKIP_MARKER.search(previous)
        yield Example(page, start + 1, commands, marker["reason"] if marker else None)


EXAMPLES = [example for page in PAGES for example in examples_in(page)]


# --- Shown answers: JSON with `...` (anything more) and truncated numbers (`16.62…`) --------------------------------


class Elided:
    """`...` (or `…`): in an array, any number of elements; in an object, any other members; as a value, anything."""


ANY = Elided()


@dataclass(frozen=True)
class Shown:
    """A number as a page shows it: it stands for any value within its last digit (half of it when rounded, all of
    it when cut short with `…`)."""

    text: str
    value: float
    last_digit: float
    truncated: bool

    @property
    def precision(self) -> float:
        return self.last_digit if self.truncated else self.last_digit / 2


@dataclass(frozen=True)
class ShownObject:
    members: dict[str, object]
    more: bool


TOKEN = re.compile(
    r"""\s*(?:(?P<ellipsis>\.\.\.|…)
    |(?P<number>-?\d+(?:\.\d+)?(?P<cut>…)?(?:[eE][-+]?\d+)?)
    |(?P<string>"(?:[^"\\]|\\.)*")
    |(?P<literal>true|false|null)
    |(?P<punct>[{}\[\]:,]))""",
    re.VERBOSE,
)


def shown_number(text: str) -> Shown:
    mantissa, _, exponent = text.replace("…", "").lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    value = float(text.replace("…", ""))
    return Shown(text, value, 10.0 ** (int(exponent or 0) - decimals), "…" in text)


def parse_shown(text: str) -> object:
    """A shown answer as a pattern: JSON values, `Shown` numbers, `ShownObject`s and `ANY`."""
    tokens = []
    position = 0
    while position < len(text.rstrip()):
        match = TOKEN.match(text, position)
        if not match:
            raise ValueError(f"cannot read the shown answer at {text[position : position + 30]!r}")
        tokens.append(match)
        position = match.end()
    value, rest = _value(tokens, 0)
    if rest != len(tokens):
        raise ValueError(f"the shown answer goes on after its value: {tokens[rest].group().strip()!r}")
    return value


def _value(tokens: list[re.Match[str]], i: int) -> tuple[object, int]:
    token = tokens[i]
    if token["ellipsis"]:
        return ANY, i + 1
    if token["number"]:
        return shown_number(token["number"]), i + 1
    if token["string"]:
        return json.loads(token["string"]), i + 1
    if token["literal"]:
        return json.loads(token["literal"]), i + 1
    if token["punct"] == "[":
        items: list[object] = []
        i += 1
        while tokens[i]["punct"] != "]":
            item, i = _value(tokens, i)
            items.append(item)
            i += 1 if tokens[i]["punct"] == "," else 0
        return items, i + 1
    if token["punct"] == "{":
        members: dict[str, object] = {}
        more = False
        i += 1
        while tokens[i]["punct"] != "}":
            if tokens[i]["ellipsis"]:
                more, i = True, i + 1
            else:
                key = json.loads(tokens[i]["string"])
                assert tokens[i + 1]["punct"] == ":", f"':' expected after {key!r}"
                members[key], i = _value(tokens, i + 2)
            i += 1 if tokens[i]["punct"] == "," else 0
        return ShownObject(members, more), i + 1
    raise ValueError(f"unexpected {token.group().strip()!r} in the shown answer")


def assert_answers_as_shown(shown: object, got: object, atol: float, path: str = "answer") -> None:
    """`got` (the service's JSON) is what `shown` shows: numbers within their shown precision, and never closer than
    the rounding the computation allows (`atol`, absolute, or 1e-9 relative, as the README test allows a mean)."""
    if shown is ANY:
        return
    if isinstance(shown, Shown):
        assert isinstance(got, int | float), f"{path}: {got!r} where {shown.text}"
        assert not isinstance(got, bool), f"{path}: {got!r} where {shown.text}"
        allowed = max(shown.precision, 1e-9 * abs(shown.value), atol)
        assert math.isfinite(got), f"{path}: answered {got!r}"
        assert abs(got - shown.value) <= allowed, (
            f"{path}: answered {got!r}, shown {shown.text} (allowed ±{allowed:.3g})"
        )
    elif isinstance(shown, ShownObject):
        assert isinstance(got, dict), f"{path}: {got!r} where an object is shown"
        missing = set(shown.members) - set(got)
        extra = set() if shown.more else set(got) - set(shown.members)
        assert not missing, f"{path}: members shown but not answered: {sorted(missing)}"
        assert not extra, f"{path}: members answered but not shown (and no `...`): {sorted(extra)}"
        for key, member in shown.members.items():
            assert_answers_as_shown(member, got[key], atol, f"{path}.{key}")
    elif isinstance(shown, list):
        assert isinstance(got, list), f"{path}: {got!r} where an array is shown"
        _assert_array(shown, got, atol, path)
    else:
        assert got == shown, f"{path}: answered {got!r}, shown {shown!r}"


def _assert_array(shown: list[object], got: list[object], atol: float, path: str) -> None:
    """Elements in order; `...` stands for any number of them. The segments between ellipses are matched in turn:
    the first from the start (unless the array starts with `...`), the last from the end, the others where they
    first fit."""
    segments: list[list[object]] = [[]]
    for item in shown:
        segments.append([]) if item is ANY else segments[-1].append(item)
    if len(segments) == 1:
        assert len(got) == len(shown), f"{path}: {len(got)} elements, {len(shown)} shown"
        for i, (a, b) in enumerate(zip(shown, got, strict=True)):
            assert_answers_as_shown(a, b, atol, f"{path}[{i}]")
        return
    first, *middle, last = segments
    assert len(got) >= len(first) + len(last), f"{path}: {len(got)} elements, at least {len(first) + len(last)} shown"
    for i, item in enumerate(first):
        assert_answers_as_shown(item, got[i], atol, f"{path}[{i}]")
    for i, item in enumerate(last, start=len(got) - len(last)):
        assert_answers_as_shown(item, got[i], atol, f"{path}[{i}]")
    start = len(first)
    for segment in middle:
        for offset in range(start, len(got) - len(last) - len(segment) + 1):
            try:
                for i, item in enumerate(segment):
                    assert_answers_as_shown(item, got[offset + i], atol, f"{path}[{offset + i}]")
            except AssertionError:
                continue
            start = offset + len(segment)
            break
        else:
            raise AssertionError(f"{path}: no run of elements is the shown {len(segment)} after element {start}")


# --- The shown answers are the deployed Park model's ---------------------------------------------------------------


def shipped_park_model() -> Path:
    """The pages' examples are the packaged Park model's; `make package-model` may have replaced it."""
    if json.loads(manifest_path_for(DEPLOYED_MODEL).read_text())["name"] != "park1991":
        pytest.skip("model_artifacts/ holds another model than the documentation's examples")
    return DEPLOYED_MODEL


def rounding_atol(model_path: Path) -> float:
    """What BLAS's rounding on another machine may move an answer by, in the outputs' units: a variance this small is
    what is left of the prior variance after m products of it, each rounded, so m * eps * prior (as the README test
    derived it when it was the only one)."""
    with np.load(model_path, allow_pickle=False) as arrays:
        prior = float(arrays["kernel_variance"] * np.max(arrays["y_std"]) ** 2)
        m = arrays["inputs"].shape[0]
    return m * float(np.finfo(float).eps) * prior


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`make serve`'s server on the deployed model, as the pages' readers start it (the template's settings, no
    overrides), without jobs."""
    from scripts.local_lambda import spawn_serve

    shipped_park_model()
    process, base_url = spawn_serve(tmp_path_factory.mktemp("docs-serve") / "server.log", "--no-jobs", "-w", "1")
    try:
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def run(command: str, base_url: str, folder: Path) -> str:
    for local in LOCAL_URLS:
        command = command.replace(local, base_url)
    result = subprocess.run(
        ["bash", "-c", command],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "URL": base_url, "KEY": ""},
    )
    assert result.returncode == 0, f"{command!r} exited {result.returncode}: {result.stderr}"
    return result.stdout


@pytest.mark.slow
@pytest.mark.xdist_group("docs_server")
@pytest.mark.parametrize(
    "example",
    [
        pytest.param(
            e, id=e.name, marks=[pytest.mark.skip(reason=f"{e.name}: {e.skip_reason}")] if e.skip_reason else []
        )
        for e in EXAMPLES
    ],
)
def test_every_curl_example_is_answered_as_shown(example: Example, docs_server: str, tmp_path: Path):
    # given an example's commands, each curl with the answer the page shows
    for command in example.commands:
        if re.search(r"(^|[\s;&|(])curl\s", command.text):
            assert command.answer is not None, (
                f"{example.name}: show the answer to {command.text!r}, or mark the block skipped (and say why)"
            )
    atol = rounding_atol(shipped_park_model())
    for command in example.commands:
        # when it runs against the local server
        output = run(command.text, docs_server, tmp_path)
        # then the answer is the one shown
        if command.answer is not None:
            assert_answers_as_shown(parse_shown(command.answer), json.loads(output), atol, example.name)


def test_the_examples_cover_every_capability_and_skips_say_why():
    # given every example in the pages
    names = {e.page.name for e in EXAMPLES}
    run_routes = {
        r for e in EXAMPLES if not e.skip_reason for c in e.commands for r in re.findall(r"/([a-z]+)\b", c.text)
    }
    # then the README and the reference pages have examples that run, over every capability with a curl
    assert {"README.md", "api.md", "analyses.md"} <= names
    assert {"predict", "sample", "sensitivity", "propagate", "suggest"} <= run_routes
    # and every skip marker in the pages is one the collector reads (a reason given), in front of an example
    markers = []
    for page in PAGES:
        for number, line in enumerate(page.read_text().splitlines(), start=1):
            if line.startswith("<!-- docs-test"):
                assert SKIP_MARKER.fullmatch(line), f"{page.name}:{number}: write `<!-- docs-test: skip: why -->`"
                markers.append(f"{page.name}:{number}")
    skipped = [e for e in EXAMPLES if e.skip_reason]
    assert len(skipped) == len(markers), f"a skip marker stands before something that is not a curl example: {markers}"


# --- The matcher itself: it can fail -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shown", "got"),
    [
        ('{"mean": 16.62, "variance": 4.95…e-7}', {"mean": 16.6204, "variance": 4.9562e-7}),
        ('{"estimate": 4.599, ...}', {"estimate": 4.5993, "ci_low": 4.5, "ci_high": 4.7}),
        ('{"samples": [[6.98, 9.30], ...], "x2": {...}}', {"samples": [[6.981, 9.298]] * 3, "x2": {"a": 1}}),
        ("[1.0, ..., 5.0]", [1.0, 2.0, 3.0, 4.0, 5.0]),
        ('{"counts_low": [...], "n": 1024}', {"counts_low": [], "n": 1024}),
    ],
)
def test_a_shown_answer_matches_what_it_stands_for(shown: str, got: object):
    assert_answers_as_shown(parse_shown(shown), got, atol=0.0)


@pytest.mark.parametrize(
    ("shown", "got"),
    [
        ('{"counts": [1063.0, 1418.0]}', {"counts": [1062.98, 1418.2]}),  # rounded: ±0.05 only
        ('{"mean": 16.62…}', {"mean": 16.64}),  # cut short: 16.62 to 16.63
        ('{"mean": 16.62}', {"mean": 16.62, "variance": 1e-7}),  # a member not shown, without `...`
        ('{"mean": 16.62, "variance": 1e-7}', {"mean": 16.62}),  # a member shown, not answered
        ("[1.0, 2.0]", [1.0, 2.0, 3.0]),
        ("[1.0, ..., 5.0]", [1.0, 2.0, 4.0]),
        ('{"target": "latent"}', {"target": "noisy"}),
        ('{"n": 1024}', {"n": True}),
    ],
)
def test_an_answer_other_than_shown_fails(shown: str, got: object):
    with pytest.raises(AssertionError):
        assert_answers_as_shown(parse_shown(shown), got, atol=0.0)


def test_commands_are_read_as_a_reader_sees_them():
    # given a console block and a bash block with multi-line commands and answers
    console = ['$ curl -d \'{"a":', "   1}' $URL/x", '{"b": 2,', ' "c": 3}', "$ echo hi > f"]
    bash = ["# a comment", "curl $URL/y \\", "  -d '{}'", '{"d": 4}', "", "curl $URL/z", "other command"]
    # then each command is whole, with the answer under it
    assert list(console_commands(console)) == [
        Command("curl -d '{\"a\":\n   1}' $URL/x", '{"b": 2,\n "c": 3}'),
        Command("echo hi > f", None),
    ]
    assert list(bash_commands(bash)) == [
        Command("curl $URL/y \\\n  -d '{}'", '{"d": 4}'),
        Command("curl $URL/z", None),
        Command("other command", None),
    ]


# --- The site ------------------------------------------------------------------------------------------------------


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config)]
    return subprocess.run([*command, "--site-dir", str(site)], capture_output=True, text=True, timeout=300)


class Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ids.update(value for name, value in attrs if name == "id" and value)


def anchors_of(html: Path) -> set[str]:
    parser = Anchors()
    parser.feed(html.read_text())
    return parser.ids


@pytest.fixture(scope="module")
def built_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("site")
    result = mkdocs_build(ROOT / "mkdocs.yml", site)
    assert result.returncode == 0, result.stderr
    return site


def test_the_site_builds_strict_with_every_page_in_its_nav(built_site: Path):
    # then every page of docs/ was built, with the explorer's picture and the OpenAPI document beside them
    for page in (ROOT / "docs").glob("*.md"):
        built = built_site / ("index.html" if page.stem == "index" else f"{page.stem}/index.html")
        assert built.is_file(), f"{page.name} was not built"
    assert (built_site / "explorer.png").is_file()
    assert json.loads((built_site / "openapi.json").read_text())["openapi"].startswith("3.1")


def test_the_readmes_links_resolve_to_files_and_the_sites_anchors(built_site: Path):
    # given every relative link in the README (the site's build checks the pages' own links)
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\((?!https?://)([^)\s]+)\)", readme)
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        target, _, anchor = link.partition("#")
        if not target:  # a section of the README itself: GitHub's anchors are its headings, lower-cased
            titles = re.findall(r"^#+ (.*)$", readme, re.MULTILINE)
            headings = {re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-") for title in titles}
            assert anchor in headings, f"README links to #{anchor}, which is no heading of it"
            continue
        # then the file exists, and a page's anchor is one the built site has
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"
        if anchor and target.startswith("docs/") and target.endswith(".md"):
            stem = Path(target).stem
            html = built_site / ("index.html" if stem == "index" else f"{stem}/index.html")
            assert anchor in anchors_of(html), f"README links to {link}: {target} has no such anchor"


@pytest.mark.parametrize(
    ("broken", "message"),
    [("[limits](api.md#no-such-section)", "no-such-section"), ("[a page](no-such-page.md)", "no-such-page.md")],
)
def test_a_broken_link_or_anchor_fails_the_strict_build(tmp_path: Path, broken: str, message: str):
    # given a copy of the site with one broken link on its home page
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    index = tmp_path / "docs" / "index.md"
    index.write_text(index.read_text() + f"\nSee {broken}.\n")
    # when it is built as CI builds it
    result = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    # then the build fails, naming the link
    assert result.returncode != 0
    assert message in result.stderr
