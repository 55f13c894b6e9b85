"""The docs stay true: every block on the Getting started page runs as written, the
pricing page's examples print what they show, and every CLI command is documented."""

from __future__ import annotations

import ast
import doctest
import importlib.metadata
import importlib.util
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import click
import pytest

from modelforge.cli import cli
from modelforge.report import usage_report

DOCS = Path(__file__).resolve().parents[1] / "docs"
# A fence at the start of a line; fences indented inside lists are not examples to run.
FENCE = re.compile(r"^```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)
# Optional dependencies a block may need; without them it is skipped, not failed.
EXTRAS = {
    "langchain_core": "langchain",
    "langchain_openai": "all",
    "langchain_anthropic": "all",
    "llama_index": "llamaindex",
    "opentelemetry": "otel",
    "matplotlib": "chart",
}
# Settings from the developer's shell that would change what a block does or where it
# sends data (LangSmith tracing, a proxy base URL).
_LEAKY_ENV = re.compile(r"^(MODELFORGE_|OPENAI_|ANTHROPIC_|LANGCHAIN_|LANGSMITH_|DO_NOT_TRACK$)")


def fenced_blocks(page: str) -> list[tuple[str, str]]:
    text = (DOCS / page).read_text(encoding="utf-8")
    return [(m["lang"], m["body"]) for m in FENCE.finditer(text)]


def _imported_modules(code: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def _skip_without_extras(blocks: list[tuple[str, str]]) -> None:
    needed = set()
    for lang, body in blocks:
        if lang == "python":
            needed |= _imported_modules(body)
        elif "modelforge demo" in body:
            needed |= {"langchain_openai", "langchain_anthropic"}
    for module in sorted(needed & EXTRAS.keys()):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"needs {module}: pip install 'model-forge[{EXTRAS[module]}]'")
    try:
        importlib.metadata.distribution("model-forge")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("model-forge is not installed, so `pip install` cannot be checked")


def _block_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not _LEAKY_ENV.match(k)}
    env.update(
        MODELFORGE_CONFIG_DIR=str(home / "config"),
        MODELFORGE_CACHE_DIR=str(home / "cache"),
        MODELFORGE_DATA_DIR=str(home / "data"),
        # `pip install` on the page must succeed offline: everything is installed.
        PIP_NO_INDEX="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    )
    return env  # TIKTOKEN_CACHE_DIR, set by conftest, is kept


def _run(lang: str, body: str, n: int, cwd: Path, env: dict[str, str]) -> str:
    if lang == "python":
        script = cwd / f"block_{n}.py"
        script.write_text(body, encoding="utf-8")
        command: list[str] | str = [sys.executable, str(script)]
    else:
        command = body
    result = subprocess.run(
        command,
        shell=lang != "python",
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
    assert result.returncode == 0, f"index.md block {n} ({lang}) failed:\n{body}\n{output}"
    # The library logs its own trouble (an unwritable log, a bad price table) as warnings.
    assert "modelforge:" not in result.stderr, f"index.md block {n} warned:\n{output}"
    return result.stdout


@pytest.mark.slow
def test_getting_started_blocks_run_as_written(tmp_path: Path, user_dirs: Path) -> None:
    blocks = fenced_blocks("index.md")
    languages = {lang for lang, _ in blocks}
    assert languages == {"python", "bash"}, f"index.md has blocks in {languages}"
    _skip_without_extras(blocks)
    work = tmp_path / "work"
    work.mkdir()
    env = _block_env(user_dirs)
    for n, (lang, body) in enumerate(blocks):
        _run(lang, body, n, work, env)

    # The page states these costs; the log the blocks wrote must agree.
    text = (DOCS / "index.md").read_text(encoding="utf-8")
    for db, expected in (
        ("usage.db", {"gpt-4o": "0.007125", "gpt-4o-mini": "0.00102"}),
        ("demo.db", {"gpt-4o-2024-08-06": "0.005", "claude-sonnet-4-5-20250929": "0.0096"}),
    ):
        conn = sqlite3.connect(work / db)
        try:
            rows = usage_report(conn, ["model"]).as_json()["rows"]
        finally:
            conn.close()
        costs = {row["model"]: row["cost_usd"] for row in rows}
        for model, cost in expected.items():
            assert costs.get(model) == cost, f"{db}: {model} cost {costs.get(model)}"
    assert "$0.007125" in text and 'Decimal("0.00102")' in text


def test_pricing_examples_print_what_they_show(user_dirs: Path) -> None:
    """The ```pycon blocks of pricing.md, as doctests sharing one namespace in order."""
    blocks = [body for lang, body in fenced_blocks("pricing.md") if lang == "pycon"]
    assert blocks
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    namespace: dict[str, object] = {}
    for n, body in enumerate(blocks):
        test = parser.get_doctest(body, {}, f"pricing.md block {n}", "docs/pricing.md", 0)
        test.globs = namespace  # get_doctest copies; later blocks use earlier names
        runner.run(test, clear_globs=False)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} of {results.attempted} examples failed"


def _command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[str]:
    paths = []
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        paths.append(" ".join(path))
        if isinstance(command, click.Group):
            paths.extend(_command_paths(command, path))
    return paths


def test_every_cli_command_is_in_the_cli_reference() -> None:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert ":module: modelforge.cli" in text and ":command: cli" in text
    documented = text
    if importlib.util.find_spec("mkdocs_click") is not None:
        import markdown

        documented += markdown.markdown(text, extensions=["mkdocs-click"])
    paths = _command_paths(cli)
    assert "usage calls" in paths and "prices estimate" in paths
    missing = [path for path in paths if f"modelforge {path}" not in documented]
    assert not missing, f"commands missing from docs/cli.md: {missing}"


def test_every_page_is_in_the_nav() -> None:
    nav = (DOCS.parent / "mkdocs.yml").read_text(encoding="utf-8")
    pages = sorted(p.name for p in DOCS.glob("*.md"))
    assert pages, "no pages in docs/"
    missing = [page for page in pages if f": {page}" not in nav]
    assert not missing, f"pages missing from the mkdocs.yml nav: {missing}"
