"""Without an optional extra's package, model-forge still imports and prices, and using
the integration that needs it fails with an error naming the extra that installs it."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run_without(package: str, code: str) -> str:
    """Run `code` in a fresh interpreter where `package` cannot be imported."""
    block = f"""
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == {package!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None

        sys.meta_path.insert(0, Block())
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(block) + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_without_langchain_track_usage_works_and_the_handler_names_the_extra() -> None:
    out = _run_without(
        "langchain_core",
        """
        import modelforge
        with modelforge.track_usage(persist=False) as session:
            pass
        cost = modelforge.price("gpt-4o", modelforge.Usage(input_tokens=1000))
        print(len(session.calls), cost.total)
        try:
            modelforge.UsageCallbackHandler
        except ModuleNotFoundError as exc:
            print(exc.name, "|", exc)
        """,
    )
    # 1000 input tokens of gpt-4o at $2.50 per 1M
    assert out.splitlines() == [
        "0 0.0025000",
        "langchain_core | No module named 'langchain_core'; model-forge's langchain "
        "integration needs it: pip install 'model-forge[langchain]'",
    ]


def test_without_llama_index_asking_for_it_names_the_extra() -> None:
    out = _run_without(
        "llama_index",
        """
        import modelforge
        for attempt in ("track_usage(llamaindex=True)", "import modelforge.llamaindex"):
            try:
                if attempt.startswith("import"):
                    import modelforge.llamaindex
                else:
                    with modelforge.track_usage(llamaindex=True, persist=False):
                        pass
            except ModuleNotFoundError as exc:
                print(attempt, "|", exc.name, "|", exc)
        with modelforge.track_usage(persist=False) as session:
            pass
        print(len(session.calls))
        """,
    )
    message = (
        "llama_index | No module named 'llama_index'; model-forge's llamaindex integration "
        "needs it: pip install 'model-forge[llamaindex]'"
    )
    assert out.splitlines() == [
        f"track_usage(llamaindex=True) | {message}",
        f"import modelforge.llamaindex | {message}",
        "0",
    ]


def test_without_opentelemetry_the_exporter_names_the_extra() -> None:
    out = _run_without(
        "opentelemetry",
        """
        import modelforge
        try:
            import modelforge.otel
        except ModuleNotFoundError as exc:
            print(exc.name, "|", exc)
        """,
    )
    assert out.splitlines() == [
        "opentelemetry | No module named 'opentelemetry'; model-forge's otel integration "
        "needs it: pip install 'model-forge[otel]'",
    ]
