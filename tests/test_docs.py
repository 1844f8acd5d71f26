"""The docs follow the code: each test fails when a page drifts from what the code does.

- every key of pyproject's ``[tool.flwr.app.config]`` is in docs/run-config.md with its default and a meaning;
- the ServerApp accepts exactly the keys pyproject lists, with the same defaults (``run-name`` excepted);
- every dashboard page of ``dashboards.views.PAGES`` (and no other) is in docs/dashboard.md's page table;
- every sub-command of ``fedchest`` and ``fedchest-site`` has a section in docs/cli.md naming each of its arguments,
  and every console script of pyproject is named there;
- every benchmark of ``benchmarks.run.BENCHMARKS`` is in docs/benchmarks.md;
- every relative link (and its #anchor) in README.md, docs/ and deploy/ resolves; README.md stays an entry point.
"""

from __future__ import annotations

import argparse
import importlib
import io
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# the run name `flwr run .` gives a run differs on purpose from the ServerApp's own default (fedchest-run)
DEFAULT_DIFFERS = {"run-name"}
CLI_MODULES = {"fedchest": "consortium.cli", "fedchest-site": "client.cli"}
README_MAX_BYTES = 15_000


def _flwr_config() -> dict:
    return PYPROJECT["tool"]["flwr"]["app"]["config"]


def _key_rows(text: str) -> dict[str, tuple[str, str]]:
    """``| `key` | `default` | meaning |`` table rows: key -> (default as written, meaning)."""
    rows = {}
    for m in re.finditer(r"^\| `([^`]+)` \| `([^`]*)` \| (.*) \|$", text, flags=re.M):
        rows[m.group(1)] = (m.group(2), m.group(3).strip())
    return rows


def _check_documented(rows: dict[str, tuple[str, str]], config: dict) -> list[str]:
    problems = []
    for key, value in config.items():
        if key not in rows:
            problems.append(f"{key}: not in docs/run-config.md")
            continue
        written, meaning = rows[key]
        try:
            documented = tomllib.loads(f"v = {written}")["v"]
        except tomllib.TOMLDecodeError:
            problems.append(f"{key}: default `{written}` is not a TOML value")
            continue
        if documented != value or type(documented) is not type(value):
            problems.append(f"{key}: docs say {written}, the code has {value!r}")
        if not meaning:
            problems.append(f"{key}: no meaning given")
    return problems


def test_every_pyproject_key_is_documented_with_its_default() -> None:
    rows = _key_rows((DOCS / "run-config.md").read_text(encoding="utf-8"))
    assert _check_documented(rows, _flwr_config()) == []


def test_pyproject_lists_every_key_the_server_accepts() -> None:
    from server.server_app import DEFAULTS

    listed = _flwr_config()
    assert sorted(set(DEFAULTS) - set(listed)) == [], "ServerApp keys missing from [tool.flwr.app.config]"
    assert sorted(set(listed) - set(DEFAULTS)) == [], "[tool.flwr.app.config] keys the ServerApp ignores"
    differ = {k: (listed[k], v) for k, v in DEFAULTS.items() if k not in DEFAULT_DIFFERS and
              (listed[k] != v or type(listed[k]) is not type(v))}
    assert differ == {}, "pyproject default (first) differs from the ServerApp's (second)"


def test_secagg_keys_are_documented() -> None:
    from server.secagg_app import SECAGG_DEFAULTS

    rows = _key_rows((DOCS / "run-config.md").read_text(encoding="utf-8"))
    assert _check_documented(rows, SECAGG_DEFAULTS) == []


def _section(text: str, heading: str) -> str:
    """The text under ``heading`` (a whole heading line) up to the next heading of the same or a higher level."""
    lines = text.splitlines()
    start = lines.index(heading)
    level = len(heading) - len(heading.lstrip("#"))
    body = []
    for line in lines[start + 1:]:
        m = re.match(r"^(#+) ", line)
        if m and len(m.group(1)) <= level:
            break
        body.append(line)
    return "\n".join(body)


def test_every_dashboard_page_is_listed() -> None:
    from dashboards.views import PAGES

    pages = _section((DOCS / "dashboard.md").read_text(encoding="utf-8"), "## Pages")
    rows = dict(re.findall(r"^\| ([^|`]+?) \| ([^|]+?) \|", pages, flags=re.M))
    rows.pop("page", None)  # the table's header
    expected = {"Runs", *PAGES}
    assert sorted(set(rows) ^ expected) == [], "pages in the docs and in dashboards.views.PAGES differ"
    for title, module in PAGES.items():
        assert rows[title] == f"`{module.SLUG}`", f"{title}: docs give slug {rows[title]}, code {module.SLUG}"


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__(parser.prog)
        self.parser = parser


def _parser(module: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser ``module.main`` builds, caught when it parses (nothing runs)."""
    def caught(self: argparse.ArgumentParser, *args, **kwargs):
        raise _Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", caught)
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BytesIO(), encoding="utf-8"))  # main() reconfigures it
    with pytest.raises(_Parsed) as got:
        importlib.import_module(module).main([])
    monkeypatch.undo()
    return got.value.parser


def _commands(parser: argparse.ArgumentParser, name: str) -> dict[str, argparse.ArgumentParser]:
    """Every sub-command (at any depth) by its full name, e.g. ``fedchest certs init``."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, child in action.choices.items():
                found[f"{name} {sub}"] = child
                found.update(_commands(child, f"{name} {sub}"))
    return found


def _arguments(parser: argparse.ArgumentParser) -> list[str]:
    names = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        names.extend(action.option_strings or [action.dest])
    return names


def test_every_command_and_argument_is_documented(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^### `([^`]+)`$", text, flags=re.M))
    commands = {}
    for prog, module in CLI_MODULES.items():
        commands.update(_commands(_parser(module, monkeypatch), prog))
    assert len(commands) > 10
    assert sorted(set(commands) ^ headings) == [], "commands in docs/cli.md and in the parsers differ"
    missing = []
    for name, parser in commands.items():
        section = _section(text, f"### `{name}`")
        missing += [f"{name} {arg}" for arg in _arguments(parser)
                    if not re.search(r"`" + re.escape(arg) + r"[ `]", section)]
    assert missing == [], "arguments missing from their command's section in docs/cli.md"
    for script in PYPROJECT["project"]["scripts"]:
        assert f"`{script}`" in text, f"console script {script} not in docs/cli.md"


def test_every_benchmark_is_listed() -> None:
    from benchmarks.run import BENCHMARKS

    text = (DOCS / "benchmarks.md").read_text(encoding="utf-8")
    assert [name for name in BENCHMARKS if f"| `{name}` |" not in text] == []


FENCE = re.compile(r"^```.*?^```", flags=re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation other than - and _ dropped, spaces as -."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md")), *sorted((ROOT / "deploy").rglob("*.md"))]


def test_relative_links_resolve() -> None:
    broken, checked = [], 0
    for page in _markdown_files():
        prose = CODE_SPAN.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
        for target in LINK.findall(prose):
            if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
                continue
            checked += 1
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            where = f"{page.relative_to(ROOT)}: {target}"
            if not dest.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{where} (no such heading)")
    assert checked > 20
    assert broken == []


def test_readme_is_an_entry_point() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode("utf-8")) <= README_MAX_BYTES
    for command in ("make demo", "make test"):
        assert command in readme
    for page in DOCS.glob("*.md"):
        assert f"(docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"
