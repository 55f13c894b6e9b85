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
        ("usage.db", {"openai/gpt-4o": "0.007125", "openai/gpt-4o-mini": "0.00102"}),
        (
            "demo.db",
            {
                "openai/gpt-4o-2024-08-06": "0.005",
                "anthropic/claude-sonnet-4-5-20250929": "0.0096",
            },
        ),
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


# --- every command example runs (issue #25 item 3) --------------------------------------

README = DOCS.parent / "README.md"
SHELL_LANGS = {"bash", "sh", "shell", "console", ""}
# Examples that reach past this machine, and what they need: left out, by name.
NEEDS_THE_NETWORK = {
    "modelforge prices update": "downloads models.dev's catalog",
    "modelforge demo --live": "calls the real OpenAI and Anthropic APIs",
}
_SUBSTITUTION = re.compile(r"\"?\$\((modelforge [^)]*)\)\"?")


def _doc_lines() -> list[tuple[str, str, str | None]]:
    """(where, line, the page's last TOML block before it) for each shell line of the
    docs and the README, and each example line of the commands' --help."""
    lines: list[tuple[str, str, str | None]] = []
    for page in [*sorted(DOCS.glob("*.md")), README]:
        toml = None
        for m in FENCE.finditer(page.read_text(encoding="utf-8")):
            if m["lang"] == "toml":
                toml = m["body"]
            elif m["lang"] in SHELL_LANGS:
                lines += [(page.name, line, toml) for line in m["body"].splitlines()]
    for path in ["", *_command_paths(cli)]:
        command: click.Command = cli
        for name in path.split():
            assert isinstance(command, click.Group)
            command = command.commands[name]
        where = " ".join(["modelforge", path, "--help"] if path else ["modelforge --help"])
        lines += [(where, line, None) for line in _help_examples(command)]
    return lines


def _help_examples(command: click.Command) -> list[str]:
    help_text = command.help or ""
    if "Example" not in help_text:
        return []
    block = help_text.split("Example", 1)[1].split("\n\n", 1)[0]
    return [line.strip() for line in block.splitlines()[1:] if line.strip()]


Example = tuple[str, list[str], dict[str, str], str | None, dict[str, str]]


def command_examples() -> list[Example]:
    """Each `modelforge …` command in the docs: (where, args, env, stdin, files), where
    `files` are those the page wrote before it (the price file `MODELFORGE_PRICES`
    names is the page's TOML block above it)."""
    import shlex

    found = []
    for where, line, toml in _doc_lines():
        line = _SUBSTITUTION.sub(lambda m: m[1], line.strip().removeprefix("$ "))
        if "modelforge " not in line:
            continue
        words = shlex.split(line, comments=True)
        stdin = None
        for part in " ".join(shlex.quote(w) for w in words).split(" && "):
            pipeline = part.split(" | ")
            tokens = shlex.split(pipeline[-1])
            if len(pipeline) == 2 and shlex.split(pipeline[0])[0] == "echo":
                stdin = " ".join(shlex.split(pipeline[0])[1:]) + "\n"
            if "modelforge" not in tokens:
                continue
            start = tokens.index("modelforge")
            env = dict(t.split("=", 1) for t in tokens[:start] if "=" in t)
            args = tokens[start + 1 :]
            if ">" in args:  # a redirect: the output is checked here instead
                args = args[: args.index(">")]
            files = {}
            if "MODELFORGE_PRICES" in env and toml is not None:
                files[env["MODELFORGE_PRICES"]] = toml
            found.append((where, args, env, stdin, files))
    return found


EXAMPLES = command_examples()


def test_the_examples_are_found() -> None:
    commands = {" ".join(args[:2]) for _, args, *_ in EXAMPLES}
    assert {"usage watch", "usage forecast", "usage efficiency", "demo --db"} <= commands
    assert ["usage", "--by", "user_id", "--json"] in [args for _, args, *_ in EXAMPLES]
    assert len(EXAMPLES) > 60


@pytest.fixture(scope="module")
def demo_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("langchain_openai")
    from modelforge import store
    from modelforge.demo import run_demo

    path = tmp_path_factory.mktemp("demo") / "demo.db"
    result = run_demo(db=path)
    assert result.written
    store.close_all()
    return path


@pytest.fixture
def example_dir(
    tmp_path: Path, demo_log: Path, user_dirs: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A directory as a reader of the docs would have it: the demo's log as their usage
    log, the prompt files the token examples name, and the Azure deployment the pricing
    page maps."""
    import shutil

    work = tmp_path / "work"
    work.mkdir()
    for name in ("demo.db", "usage.db"):
        shutil.copy(demo_log, work / name)
    messages = '[{"role": "user", "content": "How far is the Moon?"}]'
    tools = '[{"type": "function", "function": {"name": "search", "parameters": {}}}]'
    (work / "messages.json").write_text(messages, encoding="utf-8")
    (work / "request.json").write_text(f'{{"messages": {messages}}}', encoding="utf-8")
    (work / "tools.json").write_text(tools, encoding="utf-8")
    config = user_dirs / "config"
    config.mkdir(parents=True)
    (config / "config.toml").write_text('[azure.deployments]\n"prod-chat" = "gpt-4o"\n')
    monkeypatch.chdir(work)
    monkeypatch.setenv("MODELFORGE_DB", str(work / "usage.db"))
    return work


PAGES: dict[str, list[Example]] = {}
for _example in EXAMPLES:
    PAGES.setdefault(_example[0], []).append(_example)


@pytest.mark.parametrize("where", list(PAGES))
def test_every_command_example_runs(example_dir: Path, wire: object, where: str) -> None:
    """A page's commands run in order in one directory, as a reader would run them
    (`budget set` before `budget rm`); each must succeed."""
    from click.testing import CliRunner

    for _, args, env, stdin, files in PAGES[where]:
        for name, text in files.items():
            (example_dir / name).write_text(text, encoding="utf-8")
        command = "modelforge " + " ".join(args)
        if any(command.startswith(prefix) for prefix in NEEDS_THE_NETWORK):
            continue  # reaches past this machine (see NEEDS_THE_NETWORK)
        if args[:2] == ["usage", "watch"] and "--once" not in args:
            args = [*args, "--once"]  # live it redraws until q; one frame shows it works
        if args and args[0] == "reconcile":
            # The billing API is the wire server's stub, with an admin key it accepts.
            base_url = wire.base_url  # type: ignore[attr-defined]
            env = {
                **env,
                "OPENAI_ADMIN_KEY": "sk-admin-docs",
                "ANTHROPIC_ADMIN_KEY": "sk-ant-admin-docs",
                "MODELFORGE_OPENAI_ADMIN_URL": base_url,
                "MODELFORGE_ANTHROPIC_ADMIN_URL": base_url,
            }
        result = CliRunner().invoke(cli, args, input=stdin, env=env)
        assert result.exit_code == 0, f"{where}: {command}\n{result.output}"
        assert "Traceback" not in result.output


def test_only_network_examples_are_left_out() -> None:
    left_out = {
        " ".join(args)
        for _, args, *_ in EXAMPLES
        if any(f"modelforge {' '.join(args)}".startswith(p) for p in NEEDS_THE_NETWORK)
    }
    assert left_out == {"prices update"}
