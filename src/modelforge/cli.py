"""The `modelforge` command. Commands parse options, call one library function, print.

Exit codes: 0 success, 2 bad usage (unknown --by, malformed date), 1 any other failure.
A log that does not exist yet reads as an empty one, with a note on stderr.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import sqlite3
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO, TypeVar

import click

from modelforge import __version__, config
from modelforge.cli_types import NON_EMPTY, SQL_INT_MAX, TIME, TOKENS, OutputPath
from modelforge.errors import ConfigError, ModelForgeError, UnknownModelError, UsageLogError

F = TypeVar("F", bound=Callable[..., Any])
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
FORMATS = ("table", "json", "csv", "markdown")


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    # Piped output gets no ANSI codes (rich detects it); NO_COLOR is honoured by rich.
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 200
    # markup=False: table cells hold model names and tags as providers sent them, and a
    # model called "[/]" must print as that, not fail as a closing tag.
    return Console(file=stream, width=width, highlight=False, markup=False)


def handle_errors(fn: F) -> F:
    """Turn library errors into `Error: …` lines with the documented exit codes."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from modelforge.report import ReportError

        try:
            return fn(*args, **kwargs)
        except ReportError as exc:
            raise click.UsageError(str(exc)) from None
        except (ConfigError, UsageLogError, ModelForgeError) as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper  # type: ignore[return-value]


# --- shared options -------------------------------------------------------------------


def db_option(fn: F) -> F:
    return click.option(
        "--db",
        "db",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Usage log file (default: MODELFORGE_DB or the user data dir).",
    )(fn)


def _apply(fn: F, options: Sequence[Callable[[F], F]]) -> F:
    for option in reversed(options):
        fn = option(fn)
    return fn


def time_options(fn: F) -> F:
    return _apply(
        fn,
        [
            click.option(
                "--since", type=TIME, help="Only calls since: 7d, 24h, 30m, 2026-11-01 or ISO time."
            ),
            click.option(
                "--until", type=TIME, help="Only calls before this time (same forms as --since)."
            ),
        ],
    )


def scope_options(fn: F) -> F:
    return _apply(
        fn,
        [
            click.option(
                "--model",
                "model_glob",
                type=NON_EMPTY,
                help="Model glob over the catalog model and the logged names, e.g. 'gpt-4o*'.",
            ),
            click.option("--provider", type=NON_EMPTY, help="Provider, e.g. openai."),
            click.option(
                "--agent", type=NON_EMPTY, help="Agent (LangGraph node or `agent` metadata)."
            ),
            click.option("--tag", type=NON_EMPTY, help="Only calls carrying this tag."),
            click.option(
                "--where",
                "where",
                multiple=True,
                metavar="KEY=VALUE",
                help="Attribute filter on the attrs JSON; repeatable.",
            ),
        ],
    )


def filter_options(fn: F) -> F:
    return time_options(scope_options(fn))


def output_options(fn: F) -> F:
    """Add --format/--json/--csv; the command gets one `fmt`, checked before it runs."""

    @functools.wraps(fn)
    def wrapper(*args: Any, fmt: str | None, as_json: bool, as_csv: bool, **kwargs: Any) -> Any:
        return fn(*args, fmt=_pick_format(fmt, as_json, as_csv), **kwargs)

    options = [
        click.option(
            "--format",
            "fmt",
            type=click.Choice(FORMATS),
            show_default="table",
            help="Output format.",
        ),
        click.option("--json", "as_json", is_flag=True, help="Same as --format json."),
        click.option("--csv", "as_csv", is_flag=True, help="Same as --format csv."),
    ]
    command: Any = wrapper
    for option in reversed(options):
        command = option(command)
    return command  # type: ignore[no-any-return]


def _pick_format(fmt: str | None, as_json: bool, as_csv: bool) -> str:
    """The one format asked for; two different ones are bad usage, whatever their order."""
    asked = {f"--format {fmt}": fmt} if fmt else {}
    if as_json:
        asked["--json"] = "json"
    if as_csv:
        asked["--csv"] = "csv"
    if len(set(asked.values())) > 1:
        raise click.UsageError(f"{' and '.join(asked)} ask for different formats; give one")
    return next(iter(asked.values()), "table")


def by_model_or_agent(fn: F) -> F:
    return click.option(
        "--by", "by", type=click.Choice(["model", "agent"]), help="One row per model or agent."
    )(fn)


def _filters(
    since: str | None,
    until: str | None,
    model_glob: str | None,
    provider: str | None,
    agent: str | None,
    tag: str | None,
    where: Sequence[str],
) -> Any:
    from modelforge.report import Filters, parse_where

    # --since and --until arrive as log timestamps: their option type parsed them.
    return Filters(
        since=since,
        until=until,
        model=model_glob,
        provider=provider,
        agent=agent,
        tag=tag,
        where=parse_where(where),
    )


def _open_log(db: Path | None) -> sqlite3.Connection:
    """The log, for reading. With no log file there yet, an empty log and a note on
    stderr: every report then prints what it prints for a log with nothing in range, so
    `--json` and `--csv` always print a valid document."""
    from modelforge.store import empty_log, open_db

    path = db if db is not None else config.default_db_path()
    if not path.exists():
        origin = "--db" if db is not None else config.db_path_origin(path)
        click.echo(f"Note: no usage log at {path} ({origin}): nothing recorded yet.", err=True)
        if db is None:
            click.echo("Run `modelforge demo` to try a report, or record calls first.", err=True)
        return empty_log()
    return open_db(path, create=False)


def _money(amount: Decimal | None) -> str:
    from modelforge.money import format_usd

    return format_usd(amount)


# --- the group ------------------------------------------------------------------------


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="modelforge")
def cli() -> None:
    """model-forge: exact token usage and USD cost of your LLM calls.

    Record calls with the LangChain handler, LlamaIndex instrumentation or
    `with modelforge.track_usage():`, then see where the money went.

    \b
    Examples:
      modelforge demo                      # try it: no API key, no network
      modelforge usage --by day --by model
      modelforge prices show gpt-4o
      modelforge telemetry status

    Shell completion: eval "$(_MODELFORGE_COMPLETE=bash_source modelforge)"
    """


def main() -> None:
    cli()


# --- usage ----------------------------------------------------------------------------


@cli.group(invoke_without_command=True)
@filter_options
@click.option(
    "--by",
    "group_by",
    multiple=True,
    metavar="GROUP",
    help="Group by day, week, month, hour, model (the catalog model a call was priced as), "
    "requested_model, served_model, provider, agent, tag, trace, status, framework, "
    "operation or an attribute key; repeatable.",
)
@output_options
@click.option(
    "--breakdown", is_flag=True, help="Put per-model rows under each row (implies --by day)."
)
@click.option(
    "--tz",
    default="UTC",
    show_default=True,
    help="Time zone periods are counted in, e.g. Europe/Paris.",
)
@click.option("--chart", is_flag=True, help="Draw cost per period as a terminal bar chart.")
@click.option(
    "--billed",
    is_flag=True,
    help="Show what the providers billed (fetched by `modelforge reconcile`) beside each "
    "day's computed cost; implies --by day.",
)
@click.option(
    "--png", type=OutputPath(), help="Write the cost chart to a PNG file (needs matplotlib)."
)
@db_option
@click.pass_context
@handle_errors
def usage(
    ctx: click.Context,
    since: str | None,
    until: str | None,
    model_glob: str | None,
    provider: str | None,
    agent: str | None,
    tag: str | None,
    where: tuple[str, ...],
    group_by: tuple[str, ...],
    fmt: str,
    breakdown: bool,
    tz: str,
    chart: bool,
    billed: bool,
    png: Path | None,
    db: Path | None,
) -> None:
    """Report calls, tokens and cost from the usage log.

    Records that were estimated (no usage from the provider) or unpriced (model not
    in the price table) are counted and listed, never shown as $0: a row shows its
    priced calls' cost and how many were unpriced, or — when none was priced.

    \b
    Examples:
      modelforge usage --since 7d
      modelforge usage --by day --by model --format json
      modelforge usage --by month --breakdown --tz Europe/Paris
      modelforge usage --by agent --where project=search --chart
      modelforge usage --since 30d --billed
    """
    if ctx.invoked_subcommand is not None:
        return
    from modelforge import report

    filters = _filters(since, until, model_glob, provider, agent, tag, where)
    group_by = group_by or (("day",) if billed else ())
    groups = report.check_groups(group_by)
    report.time_zone(tz)
    if billed:
        report.check_billed(groups, filters)
        if breakdown:
            raise click.UsageError("--billed and --breakdown cannot be used together")
    conn = _open_log(db)
    result = report.usage_report(conn, group_by, filters, tz=tz, breakdown=breakdown)
    if billed:
        result = report.add_billed(conn, result, filters)
    _print_report(result, fmt)
    _print_staleness()
    if chart or png:
        period = next((g for g in result.group_by if g in report.TIME_GROUPS), "day")
        series = report.usage_report(conn, [period], filters, tz=tz)
        points = [(str(r[period]), r["cost_usd"] or Decimal(0)) for r in series.rows]
        if chart:
            _draw_chart(points, period)
        if png:
            _write_png(points, period, png)
            click.echo(f"Wrote {png}", err=True)


_REPORT_COLUMNS = (
    ("calls", "Calls"),
    ("input_tokens", "Input"),
    ("cache_read_tokens", "Cache read"),
    ("cache_write_tokens", "Cache write"),
    ("output_tokens", "Output"),
    ("reasoning_tokens", "Reasoning"),
    ("cost_usd", "Cost (USD)"),
    ("cache_hit_rate", "Cache hit"),
    ("estimated_calls", "Estimated"),
    ("unpriced_calls", "Unpriced"),
)
_BILLED_COLUMN = (("billed_usd", "Billed (USD)"),)
_PEAK_COLUMN = (("peak_utilization", "Peak context"),)


def _print_report(result: Any, fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps(result.as_json(), indent=2))
        return
    keys = [g.removeprefix("attr:") for g in result.group_by]
    columns = _REPORT_COLUMNS + (_BILLED_COLUMN if "billed_usd" in result.totals else ())
    columns += _PEAK_COLUMN if "peak_utilization" in result.totals else ()
    model_key = ["model"] if result.breakdown else []
    total_keys = {k: ("TOTAL" if i == 0 else "") for i, k in enumerate([*keys, *model_key])}
    if fmt == "csv":
        # One row per group, or with --breakdown per group and model; then the total.
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow([*keys, *model_key] + [c for c, _ in columns])
        for row in result.rows:
            for line in row.get("breakdown") or [row]:
                cells = [_cell(row[k]) for k in keys] + [_cell(line[k]) for k in model_key]
                writer.writerow(cells + [_cell(line[c]) for c, _ in columns])
        total = [total_keys[k] for k in [*keys, *model_key]]
        writer.writerow(total + [_cell(result.totals[c]) for c, _ in columns])
        return
    header = [k.capitalize() for k in [*keys, *model_key]] + [title for _, title in columns]
    body, ends = [], []
    for row in result.rows:
        body.append([_cell(row[k]) for k in keys] + [""] * len(model_key) + _sums(row, columns))
        for line in row.get("breakdown") or []:
            key_cells = [""] * len(keys) + [f"└ {_cell(line['model'])}"]
            body.append(key_cells + _sums(line, columns))
        ends.append(len(body) - 1)
    body.append(list(total_keys.values()) + _sums(result.totals, columns))
    if fmt == "markdown":
        click.echo(_markdown(header, body))
    else:
        from rich.table import Table

        table = Table(show_footer=False)
        for i, title in enumerate(header):
            table.add_column(title, justify="left" if i < len(keys) + len(model_key) else "right")
        last_group = len(body) - 2
        for n, cells in enumerate(body):
            table.add_row(*cells, end_section=n == last_group or (result.breakdown and n in ends))
        _console().print(table)
    if any(g in ("hour", "day", "week", "month") for g in result.group_by):
        click.echo(f"Periods are in {result.tz}.")
    if result.unpriced:
        click.echo("\nUnpriced calls (not in the price table, not counted as $0):")
        for item in result.unpriced:
            click.echo(
                f"  {item['model'] or 'unknown'} ({item['provider'] or '?'}): {item['calls']}"
            )
    estimated = result.totals["estimated_calls"]
    if estimated:
        click.echo(f"\n{estimated} call(s) have estimated token counts (no usage from provider).")


def _sums(row: dict[str, Any], columns: Sequence[tuple[str, str]]) -> list[str]:
    return [_cost_cell(row) if c == "cost_usd" else _display(c, row[c]) for c, _ in columns]


def _cost_cell(row: dict[str, Any]) -> str:
    """Priced calls' cost, plus how many were unpriced; — when none was priced."""
    cost, unpriced = row["cost_usd"], row["unpriced_calls"]
    if cost is None:
        return "—"
    return _money(cost) + (f" + {unpriced} unpriced" if unpriced else "")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return str(value)


def _display(column: str, value: Any) -> str:
    if column in ("cost_usd", "billed_usd"):
        return _money(value)
    if column == "cache_hit_rate":
        return f"{value:.1%}"
    if column == "peak_utilization":
        return "—" if value is None else f"{value:.1%}"
    if isinstance(value, int):
        return f"{value:,}"
    return _cell(value)


def _markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def _tabulate(
    columns: Sequence[tuple[str, str, Callable[[Any], str]]],
    rows: Sequence[dict[str, Any]],
    fmt: str,
    title: str | None = None,
    total: bool = False,
) -> None:
    """Rows of exact values as CSV (exact), Markdown or a table (each shown by its
    column's formatter; text columns left-aligned). `total`: the last row is a total."""
    if fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow([key for key, _, _ in columns])
        for row in rows:
            writer.writerow([_cell(row.get(key)) for key, _, _ in columns])
        return
    header = [title_ for _, title_, _ in columns]
    body = [[shown(row.get(key)) for key, _, shown in columns] for row in rows]
    if fmt == "markdown":
        if title:
            click.echo(f"**{title}**\n")
        click.echo(_markdown(header, body))
        return
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for _, title_, shown in columns:
        table.add_column(title_, justify="left" if shown is _cell else "right")
    for n, cells in enumerate(body):
        table.add_row(*cells, end_section=total and n == len(body) - 2)
    _console().print(table)


def _draw_chart(points: list[tuple[str, Decimal]], period: str, width: int = 40) -> None:
    click.echo(f"\nCost per {period}")
    if not points:
        click.echo("  (no calls)")
        return
    top = max((cost for _, cost in points), default=Decimal(0))
    label_width = max(len(label) for label, _ in points)
    for label, cost in points:
        bar = "█" * (int(cost / top * width) if top else 0)
        click.echo(f"  {label.ljust(label_width)} {bar} {_money(cost)}")


def _write_png(points: list[tuple[str, Decimal]], period: str, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise click.ClickException(
            "--png needs matplotlib: pip install 'model-forge[chart]'"
        ) from None
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar([p[0] for p in points], [float(p[1]) for p in points])  # float only for drawing
    ax.set_ylabel("USD")
    ax.set_title(f"Cost per {period}")
    fig.autofmt_xdate()
    fig.tight_layout()
    try:
        # PNG whatever the name ends in: `--png chart.out` is still what was asked for.
        fig.savefig(path, format="png")
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


@usage.command("calls")
@filter_options
@click.option(
    "-n",
    "--count",
    type=click.IntRange(1, SQL_INT_MAX),
    default=20,
    show_default=True,
    help="How many calls to show.",
)
@click.option(
    "--over",
    type=click.FloatRange(0, 1),
    metavar="SHARE",
    help="Only calls whose input filled more than this share of the model's context "
    "window, e.g. 0.8.",
)
@output_options
@db_option
@handle_errors
def usage_calls(
    since: str | None,
    until: str | None,
    model_glob: str | None,
    provider: str | None,
    agent: str | None,
    tag: str | None,
    where: tuple[str, ...],
    count: int,
    over: float | None,
    fmt: str,
    db: Path | None,
) -> None:
    """List recent calls, newest first.

    \b
    Examples:
      modelforge usage calls -n 5
      modelforge usage calls --model 'claude*' --json
      modelforge usage calls --over 0.8      # calls above 80% of their context window
    """
    from modelforge import report

    filters = _filters(since, until, model_glob, provider, agent, tag, where)
    rows = report.recent_calls(_open_log(db), count, filters, over)
    if fmt == "json":
        for row in rows:
            row["tags"] = json.loads(row["tags"]) if row["tags"] else []
            row["attrs"] = json.loads(row["attrs"]) if row["attrs"] else {}
        click.echo(json.dumps(rows, indent=2))
        return
    if fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(report.CALL_COLUMNS)
        writer.writerows([_cell(row[c]) for c in report.CALL_COLUMNS] for row in rows)
        return
    columns: list[tuple[str, str, Callable[[Any], str]]] = [
        ("time", "Time (UTC)", _cell),
        ("model", "Model", _cell),
        ("provider", "Provider", _cell),
        ("input_tokens", "Input", _count),
        ("cache_read_tokens", "Cached", _count),
        ("output_tokens", "Output", _count),
        ("context", "Context", _figure),
        ("cost", "Cost", _figure),
        ("status", "Status", _cell),
    ]
    shown = [
        {
            **row,
            "time": row["ts"][:19].replace("T", " "),
            "model": row["response_model"] or row["model"] or "?",
            "context": _context_share(row["context_used"], row["context_limit"]),
            "cost": _money(Decimal(row["cost_usd"])) if row["cost_usd"] else "unpriced",
            "status": row["status"] + (" (est.)" if row["estimated"] else ""),
        }
        for row in rows
    ]
    _tabulate(columns, shown, fmt)


def _count(value: Any) -> str:
    return "" if value is None else f"{value:,}"


def _figure(value: Any) -> str:
    """A figure already formatted as text: shown as it is, right-aligned."""
    return _cell(value)


def _context_share(used: int | None, limit: int | None) -> str:
    """A call's input as a share of its model's context window; — when unknown."""
    return f"{used / limit:.1%}" if limit and used is not None else "—"


@usage.command("export")
@filter_options
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv", show_default=True
)
@click.option("-o", "--output", type=OutputPath(), help="File (default stdout).")
@db_option
@handle_errors
def usage_export(
    since: str | None,
    until: str | None,
    model_glob: str | None,
    provider: str | None,
    agent: str | None,
    tag: str | None,
    where: tuple[str, ...],
    fmt: str,
    output: Path | None,
    db: Path | None,
) -> None:
    """Stream every matching call as CSV or JSON Lines, in constant memory.

    \b
    Examples:
      modelforge usage export --format jsonl > calls.jsonl
      modelforge usage export --since 30d -o last-month.csv
    """
    from modelforge import report

    filters = _filters(since, until, model_glob, provider, agent, tag, where)
    names, rows = report.export_rows(_open_log(db), filters)
    if output is None:
        _write_rows(sys.stdout, fmt, names, rows)
        return
    with _writing(output) as stream:
        _write_rows(stream, fmt, names, rows)


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[TextIO]:
    """Open `path` for text output; a failure to open or write it is an `Error:` line."""
    try:
        with path.open("w", newline="", encoding="utf-8") as stream:
            yield stream
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror or exc}") from None


def _write_rows(stream: TextIO, fmt: str, names: list[str], rows: Iterable[Any]) -> None:
    if fmt == "csv":
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(names)
        writer.writerows(rows)
        return
    dumps = json.JSONEncoder(ensure_ascii=False).encode
    for row in rows:
        stream.write(dumps(dict(zip(names, row))) + "\n")


@usage.command("prune")
@click.option("--older-than", required=True, help="Delete calls older than this: 90d, 12h, 4w.")
@db_option
@handle_errors
def usage_prune(older_than: str, db: Path | None) -> None:
    """Delete old calls from the log (retention).

    Set `retention_days = 90` in config.toml to prune automatically.

    \b
    Example:
      modelforge usage prune --older-than 90d
    """
    from modelforge import report

    age = report.parse_age(older_than)
    deleted = report.prune(_open_log(db), age)
    click.echo(f"Deleted {deleted} call(s) older than {older_than}.")


@usage.command("watch")
@filter_options
@click.option("--session", help="Only this session's calls (track_usage(session=...)).")
@click.option(
    "--window",
    type=click.IntRange(1, 24 * 60),
    default=15,
    show_default=True,
    help="Minutes the burn rate is measured over.",
)
@click.option(
    "--last", type=click.IntRange(0, 100), default=8, show_default=True, help="Calls listed."
)
@click.option(
    "--interval",
    type=click.FloatRange(0.1, 3600),
    default=1.0,
    show_default=True,
    help="Seconds between refreshes.",
)
@click.option("--once", is_flag=True, help="Print one frame and exit (for scripts and tests).")
@db_option
@handle_errors
def usage_watch(
    since: str | None,
    until: str | None,
    model_glob: str | None,
    provider: str | None,
    agent: str | None,
    tag: str | None,
    where: tuple[str, ...],
    session: str | None,
    window: int,
    last: int,
    interval: float,
    once: bool,
    db: Path | None,
) -> None:
    """A live view of the log: totals, cost by agent and by model, the burn rate and
    the last calls, redrawn every second while other processes write the log.

    Covers today (UTC) unless --since or --session says otherwise. Each refresh reads
    only the rows written since the last one. Press q or Ctrl-C to leave.

    \b
    Examples:
      modelforge usage watch
      modelforge usage watch --session nightly-run --window 5
      modelforge usage watch --agent researcher --once
    """
    from modelforge.watch import Watcher, render, run

    filters = _filters(since, until, model_glob, provider, agent, tag, where)
    if session:
        filters.where.append(("session", session))
    elif not since:
        filters.since = _today_start()
    scope = f"session {session}" if session else f"since {filters.since[:16].replace('T', ' ')}"
    path = db if db is not None else config.default_db_path()
    watcher = Watcher(path, filters, timedelta(minutes=window), last, scope=scope + " UTC")
    if once:
        _console().print(render(watcher.refresh()))
        return
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is the documented way out
        run(watcher, _console(), interval)


def _today_start() -> str:
    from modelforge.records import format_ts

    now = datetime.now(timezone.utc)
    return format_ts(now.replace(hour=0, minute=0, second=0, microsecond=0))


@usage.command("forecast")
@scope_options
@click.option(
    "--until", "until", help="Forecast to month-end (the default), or a date or ISO time."
)
@click.option(
    "--hours", type=click.FloatRange(0, min_open=True), help="Forecast the next N hours instead."
)
@click.option(
    "--days",
    type=click.IntRange(1, 366),
    default=14,
    show_default=True,
    help="Complete UTC days of history the rate comes from.",
)
@by_model_or_agent
@output_options
@db_option
@handle_errors
def usage_forecast(
    model_glob: str | None,
    provider: str | None,
    agent: str | None,
    tag: str | None,
    where: tuple[str, ...],
    until: str | None,
    hours: float | None,
    days: int,
    by: str | None,
    fmt: str,
    db: Path | None,
) -> None:
    """Project cost and tokens from the recent daily rate, with a range.

    The rate is the mean over the last --days complete UTC days; the range is that
    mean ± one standard deviation of the days, grown with the square root of the
    horizon. With budgets configured, says when each would run out.

    \b
    Examples:
      modelforge usage forecast
      modelforge usage forecast --hours 24 --by agent
      modelforge usage forecast --until 2026-12-31 --by model --json
    """
    from modelforge.forecast import forecast

    if until and hours:
        raise click.UsageError("give --until or --hours, not both")
    filters = _filters(None, None, model_glob, provider, agent, tag, where)
    result = forecast(
        _open_log(db), until=until or "month-end", hours=hours, days=days, by=by, filters=filters
    )
    if fmt == "json":
        click.echo(json.dumps(result.as_json(), indent=2))
        return
    data = result.as_json()
    so_far = result.period_start is not None
    key = by or "group"
    columns: list[tuple[str, str, Callable[[Any], str]]] = [
        (key, (by or "").capitalize() or "All", _cell),
        ("daily_usd_mean", "Per day", _usd_text),
        ("usd", "Projected", _usd_text),
        ("usd_range", "Range", _cell),
    ]
    if so_far:
        columns += [
            ("spent_usd", "Month so far", _usd_text),
            ("total_usd", "Month total", _usd_text),
        ]
    columns += [("tokens", "Tokens", _count), ("unpriced_calls", "Unpriced", _count)]
    rows = [*data["rows"], {key: "TOTAL" if by else "all", **data["totals"]}]
    if not by:
        rows = rows[-1:]
    for row in rows:
        row["usd_range"] = f"{_usd_text(row['usd_low'])} – {_usd_text(row['usd_high'])}"
    title = (
        f"Forecast to {result.target} ({result.horizon_hours:.1f} h from now), from {result.basis}"
    )
    if fmt == "csv":
        for row in rows:
            del row["usd_range"]
        columns = [c for c in columns if c[0] != "usd_range"] + [
            ("usd_low", "", _cell),
            ("usd_high", "", _cell),
        ]
    _tabulate(columns, rows, fmt, title=title if fmt != "csv" else None, total=bool(by))
    if fmt != "csv":
        for budget in result.budgets:
            when = budget.runs_out.strftime("%Y-%m-%d %H:%M UTC") if budget.runs_out else None
            click.echo(
                f"Budget {budget.name}: {_money(budget.spent_usd)} of {_money(budget.limit_usd)}"
                + (f", runs out {when}" if when else ", lasts past the period's end")
            )


def _usd_text(value: Any) -> str:
    return "" if value is None else _money(Decimal(value))


@usage.command("efficiency")
@filter_options
@by_model_or_agent
@click.option("--as-model", help="Also price the same token counts on this model.")
@click.option(
    "--top",
    type=click.IntRange(0, 1000),
    default=5,
    show_default=True,
    help="How many of the costliest traces to list.",
)
@output_options
@db_option
@handle_errors
def usage_efficiency(
    since: str | None,
    until: str | None,
    model_glob: str | None,
    provider: str | None,
    agent: str | None,
    tag: str | None,
    where: tuple[str, ...],
    by: str | None,
    as_model: str | None,
    top: int,
    fmt: str,
    db: Path | None,
) -> None:
    """How the calls use their tokens: averages per call, cache hit rate, dollars
    saved by prompt caching, reasoning share, output/input ratio, costliest traces.

    Covers the last 7 days unless --since says otherwise. --as-model reprices the
    same token counts, exactly, on another model.

    \b
    Examples:
      modelforge usage efficiency
      modelforge usage efficiency --by model --since 7d
      modelforge usage efficiency --by agent --as-model gpt-4o-mini --json
    """
    from modelforge.efficiency import DEFAULT_SINCE, efficiency
    from modelforge.report import parse_when

    since = since or parse_when(DEFAULT_SINCE)
    filters = _filters(since, until, model_glob, provider, agent, tag, where)
    result = efficiency(_open_log(db), filters, by=by, as_model=as_model, top=top)
    data = result.as_json()
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
        return
    key = by or "group"
    columns: list[tuple[str, str, Callable[[Any], str]]] = [
        (key, (by or "").capitalize() or "All", _cell),
        ("calls", "Calls", _count),
        ("avg_input_tokens", "Avg in", _number),
        ("avg_output_tokens", "Avg out", _number),
        ("cache_hit_rate", "Cache hit", _share),
        ("cache_savings_usd", "Saved by cache", _usd_text),
        ("reasoning_share", "Reasoning", _share),
        ("output_input_ratio", "Out/in", _number),
        ("cost_usd", "Cost", _usd_text),
    ]
    if as_model:
        columns.append(("as_model_cost_usd", f"As {result.as_model}", _usd_text))
    rows = [*data["rows"], {key: "TOTAL" if by else "all", **data["totals"]}]
    if not by:
        rows = rows[-1:]
    since_text = filters.since[:10] if filters.since else "the start"
    _tabulate(columns, rows, fmt, title=f"Efficiency since {since_text}", total=bool(by))
    if fmt == "csv" or not result.traces:
        return
    trace_columns: list[tuple[str, str, Callable[[Any], str]]] = [
        ("trace", "Trace", _cell),
        ("first_ts", "First call (UTC)", _cell),
        ("calls", "Calls", _count),
        ("cost_usd", "Cost", _usd_text),
        ("models", "Models", _cell),
    ]
    traces = [
        {**t, "first_ts": t["first_ts"][:19].replace("T", " "), "models": ", ".join(t["models"])}
        for t in data["costliest_traces"]
    ]
    _tabulate(trace_columns, traces, fmt, title=f"The {len(traces)} costliest traces")


def _number(value: Any) -> str:
    return "" if value is None else f"{value:,}"


def _share(value: Any) -> str:
    return "" if value is None else f"{value:.1%}"


# --- prices ---------------------------------------------------------------------------


@cli.group()
def prices() -> None:
    """Look up, compare and refresh model prices (USD per 1M tokens).

    Prices come from four layers, highest first: your override file
    (MODELFORGE_PRICES or prices.toml/json in the config dir), the catalog fetched by
    `prices update`, the curated table bundled with model-forge, and the bundled base
    layer generated from a models.dev snapshot.
    """


@prices.command("show")
@click.argument("model")
@click.option("--provider", help="Provider hint, e.g. azure or amazon-bedrock.")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@handle_errors
def prices_show(model: str, provider: str | None, as_json: bool) -> None:
    """Show the catalog entry MODEL resolves to, with its prices and source layer.

    \b
    Examples:
      modelforge prices show gpt-4o
      modelforge prices show us.anthropic.claude-sonnet-4-5-20250929-v1:0
    """
    from modelforge.pricing.catalog import check_override
    from modelforge.pricing.resolve import get_resolver

    check_override()
    resolver = get_resolver()
    entry = resolver.resolve(model, provider)
    if entry is None:
        raise UnknownModelError(model, provider, resolver.close_matches(model))
    info = _entry_json(entry)
    _print_staleness()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"{model} → {entry.key}  ({entry.name})")
    click.echo(f"source: {entry.source}")
    limits = f"context {entry.context_limit or '?'} tokens, output {entry.output_limit or '?'}"
    click.echo(f"limits: {limits}")
    click.echo("prices (USD per 1M tokens):")
    for name, value in info["cost"].items():
        click.echo(f"  {name:<15} {value}")
    for tier in info["tiers"]:
        prices_text = ", ".join(f"{k} {v}" for k, v in tier["cost"].items())
        click.echo(f"  over {tier['size']:,} input tokens: {prices_text}")
    for mode, cost in info["modes"].items():
        click.echo(f"  {mode} tier: " + ", ".join(f"{k} {v}" for k, v in cost.items()))


def _print_staleness() -> None:
    from modelforge.pricing.catalog import staleness_notice

    notice = staleness_notice()
    if notice:
        click.echo(notice, err=True)


def _entry_json(entry: Any) -> dict[str, Any]:
    def prices_dict(p: Any) -> dict[str, str]:
        return {k: str(v) for k, v in p.as_dict().items()}

    return {
        "model": entry.model_id,
        "provider": entry.provider,
        "name": entry.name,
        "source": entry.source,
        "context_limit": entry.context_limit,
        "output_limit": entry.output_limit,
        "cost": prices_dict(entry.prices),
        "tiers": [{"size": t.size, "cost": prices_dict(t.prices)} for t in entry.tiers],
        "modes": {m: prices_dict(p) for m, p in entry.modes.items()},
    }


@prices.command("list")
@click.option("--provider", help="Only this provider.")
@click.option("--search", help="Only models whose id or name contains TEXT.")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@handle_errors
def prices_list(provider: str | None, search: str | None, as_json: bool) -> None:
    """List priced models.

    \b
    Examples:
      modelforge prices list --provider anthropic
      modelforge prices list --search mini
    """
    from modelforge.pricing.catalog import check_override, get_catalog
    from modelforge.pricing.resolve import normalise_provider

    check_override()
    wanted = normalise_provider(provider)
    needle = (search or "").lower()
    entries = sorted(
        (
            e
            for e in get_catalog()
            if (wanted is None or e.provider == wanted)
            and (not needle or needle in e.model_id.lower() or needle in e.name.lower())
        ),
        key=lambda e: (e.provider, e.model_id),
    )
    if as_json:
        click.echo(json.dumps([_entry_json(e) for e in entries], indent=2))
        return
    from rich.table import Table

    table = Table()
    for title in ("Provider", "Model", "Input", "Output", "Cache read", "Cache write", "Source"):
        table.add_column(title)
    for e in entries:
        p = e.prices
        table.add_row(
            e.provider,
            e.model_id,
            str(p.input),
            str(p.output),
            "" if p.cache_read is None else str(p.cache_read),
            "" if p.cache_write is None else str(p.cache_write),
            e.source,
        )
    _console().print(table)
    click.echo(f"{len(entries)} model(s); prices are USD per 1M tokens.")


@prices.command("update")
@click.option("--url", type=NON_EMPTY, help="Catalog URL (default: models.dev's api.json).")
@handle_errors
def prices_update(url: str | None) -> None:
    """Fetch the current models.dev prices into the user cache dir.

    If the download fails, the previous cache is kept.

    \b
    Example:
      modelforge prices update
    """
    from modelforge.pricing.update import DEFAULT_URL, update_models_dev

    result = update_models_dev(url or DEFAULT_URL)
    click.echo(
        f"Updated {result.models} models from {result.url}: {result.changed} changed, "
        f"{result.added} added, {result.removed} removed"
        + (f", {result.skipped} malformed skipped" if result.skipped else "")
        + f". Saved to {result.path}"
    )


@prices.command("estimate")
@click.argument("model")
@click.option(
    "--input",
    "input_tokens",
    type=TOKENS,
    required=True,
    help="Input tokens (all of them).",
)
@click.option(
    "--output",
    "output_tokens",
    type=TOKENS,
    required=True,
    help="Output tokens (all of them).",
)
@click.option("--cached", type=TOKENS, default=0, help="Of the input, read from cache.")
@click.option(
    "--cache-write",
    type=TOKENS,
    default=0,
    help="Of the input, written to a 5-minute cache.",
)
@click.option(
    "--cache-write-1h",
    type=TOKENS,
    default=0,
    help="Of the input, written to a 1-hour cache.",
)
@click.option("--reasoning", type=TOKENS, default=0, help="Of the output, reasoning.")
@click.option("--provider", help="Provider hint.")
@click.option("--service-tier", help="Service tier, e.g. flex, priority or batch.")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@handle_errors
def prices_estimate(
    model: str,
    input_tokens: int,
    output_tokens: int,
    cached: int,
    cache_write: int,
    cache_write_1h: int,
    reasoning: int,
    provider: str | None,
    service_tier: str | None,
    as_json: bool,
) -> None:
    """Estimate the cost of a call before making it.

    Token counts are inclusive: --cached is part of --input, --reasoning of --output.

    \b
    Example:
      modelforge prices estimate gpt-4o --input 10000 --cached 8000 --output 500
    """
    from pydantic import ValidationError

    from modelforge.pricing.catalog import check_override
    from modelforge.pricing.cost import price
    from modelforge.usage import Usage

    check_override()

    try:
        usage = Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cached,
            cache_write_tokens=cache_write,
            cache_write_1h_tokens=cache_write_1h,
            reasoning_tokens=reasoning,
            service_tier=service_tier,
        )
    except ValidationError as exc:
        raise click.UsageError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
    cost = price(model, usage, provider, strict=True)
    parts = {
        "input": cost.input,
        "cache_read": cost.cache_read,
        "cache_write": cost.cache_write,
        "output": cost.output,
        "reasoning": cost.reasoning,
    }
    if as_json:
        click.echo(
            json.dumps(
                {
                    "model": cost.catalog_model,
                    "source": cost.source,
                    "total_usd": str(cost.total),
                    "parts_usd": {k: str(v) for k, v in parts.items()},
                    "flags": list(cost.flags),
                },
                indent=2,
            )
        )
        return
    click.echo(f"{model} → {cost.catalog_model}  ({cost.source})")
    for name, amount in parts.items():
        if amount:
            click.echo(f"  {name:<12} {_money(amount)}")
    click.echo(f"  {'total':<12} {_money(cost.total)}")
    if cost.flags:
        click.echo(f"  notes: {', '.join(cost.flags)}")


# --- tokens ---------------------------------------------------------------------------


@cli.group()
def tokens() -> None:
    """Count a prompt's tokens before you send it."""


@tokens.command("count")
@click.argument("prompt", type=click.File("r", encoding="utf-8"), default="-")
@click.option("--model", required=True, help="Model id, e.g. gpt-4o or claude-sonnet-4-5.")
@click.option(
    "--tools",
    "tools_file",
    type=click.File("r", encoding="utf-8"),
    help="JSON file of tool definitions (a list, or an object with 'tools').",
)
@click.option(
    "--max-output",
    "max_output",
    type=click.IntRange(min=0),
    help="Output tokens to reserve in the context window (and price as the upper bound).",
)
@click.option(
    "--online", is_flag=True, help="Ask Anthropic or Gemini to count (needs their API key)."
)
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@handle_errors
def tokens_count(
    prompt: Any,
    model: str,
    tools_file: Any,
    max_output: int | None,
    online: bool,
    as_json: bool,
) -> None:
    """Count the tokens of PROMPT (a file, or - for stdin) for MODEL.

    PROMPT is a JSON list of chat messages (OpenAI format), a request body with
    "messages" (and "tools"), or plain text, counted as one user message. Prints the
    tokens and how they were counted (exact, estimate or provider), the share of the
    context window they use, and what they cost at the current input price.

    \b
    Examples:
      modelforge tokens count --model gpt-4o messages.json
      modelforge tokens count --model gpt-4o --tools tools.json --json messages.json
      echo "How far is the Moon?" | modelforge tokens count --model claude-sonnet-4-5
      modelforge tokens count --model gpt-4o-mini --max-output 800 request.json
    """
    from modelforge.messages import parse_prompt, parse_tools
    from modelforge.tokens import prompt_report

    messages, tools = parse_prompt(prompt.read())
    if tools_file is not None:
        tools = parse_tools(tools_file.read())
    report = prompt_report(model, messages, tools, max_output, online)
    if as_json:
        click.echo(json.dumps(report.as_json(), indent=2))
        return
    count, context, cost = report.count, report.context, report.cost
    how = count.method + (f", {count.encoding}" if count.encoding else "")
    click.echo(f"{model}: {count.tokens:,} tokens ({how})")
    for note in count.notes:
        click.echo(f"  note: {note}")
    if context.limit is None:
        click.echo("context: limit unknown")
    else:
        reserved = f" + {max_output:,} output" if max_output else ""
        verdict = "fits" if context.fits else "does NOT fit"
        click.echo(
            f"context: {count.tokens:,}{reserved} of {context.limit:,} tokens "
            f"({context.utilization:.2%} used by the prompt); {verdict}"
        )
    if cost.input_cost is None:
        click.echo("input cost: unpriced model")
        return
    click.echo(f"input cost: {_money(cost.input_cost)} at ${cost.input_price} per 1M tokens")
    if cost.max_cost is not None:
        limit = "" if max_output is not None else " (the model's output limit)"
        click.echo(
            f"with {cost.max_output_tokens:,} output tokens{limit}: up to {_money(cost.max_cost)}"
        )


# --- telemetry ------------------------------------------------------------------------


@cli.group()
def telemetry() -> None:
    """Turn the local usage log on or off, or see its status.

    MODELFORGE_TELEMETRY=0 or DO_NOT_TRACK=1 in the environment win over this switch.
    Nothing ever leaves your machine unless you enable OpenTelemetry export.
    """


@telemetry.command("on")
@handle_errors
def telemetry_on() -> None:
    """Record calls into the usage log (the default)."""
    path = _save_switch(True)
    click.echo(f"Telemetry on (saved in {path}).")
    _warn_env_override()


@telemetry.command("off")
@handle_errors
def telemetry_off() -> None:
    """Stop recording: no log file is written or created.

    Only the `telemetry` line of config.toml changes. A config file that cannot be
    read is left as it is (nothing is recorded while it is broken) and this says so.
    """
    path = _save_switch(False)
    click.echo(f"Telemetry off (saved in {path}). track_usage() totals still work in memory.")
    _warn_env_override()


def _save_switch(on: bool) -> Path:
    try:
        return config.save_setting("telemetry", on)
    except ConfigError as exc:
        raise click.ClickException(
            f"{exc}. The file was left unchanged; while it cannot be read nothing is "
            f"recorded. Fix or remove it and run this again, or set MODELFORGE_TELEMETRY="
            f"{int(on)} in your environment, which decides whatever the file says."
        ) from None


def _warn_env_override() -> None:
    status = config.telemetry_status()
    if status.reason.startswith(("MODELFORGE_TELEMETRY", "DO_NOT_TRACK")):
        click.echo(f"Note: {status.reason} in the environment decides for now.", err=True)


@telemetry.command("status")
@handle_errors
def telemetry_status() -> None:
    """Show whether recording is on and why, and what the log holds."""
    from modelforge import report
    from modelforge.store import open_db

    settings = config.load_settings(warn=False)  # its problems are printed below
    status = config.telemetry_status()
    click.echo(f"Recording: {'on' if status.enabled else 'off'} ({status.reason})")
    if settings.unreadable:
        click.echo(f"Config:    {config.config_path()} cannot be read: {settings.unreadable}")
    for line in config.describe_problems(settings).values():
        click.echo(f"Config:    {line}")
    path = config.default_db_path()
    click.echo(f"Log file:  {path}")
    if not path.exists():
        click.echo("Log size:  (no file yet)")
        return
    size = path.stat().st_size + sum(
        p.stat().st_size
        for p in (path.with_name(path.name + s) for s in ("-wal", "-shm"))
        if p.exists()
    )
    info = report.summary(open_db(path, create=False))
    click.echo(f"Log size:  {size:,} bytes, {info.rows:,} call(s)")
    if info.rows:
        click.echo(f"Range:     {info.first_ts} … {info.last_ts}")


# --- budget ---------------------------------------------------------------------------


@cli.group()
def budget() -> None:
    """Budgets in config.toml: limits on spend, checked before every call, with alerts.

    A budget set here ([[budget]] in config.toml) applies to every handler and every
    track_usage() block. See docs/budgets.md.
    """


@budget.command("set")
@click.argument("name")
@click.option("--usd", help="Limit in USD, e.g. 5 or 0.50.")
@click.option("--tokens", type=click.IntRange(min=0), help="Limit in tokens (input + output).")
@click.option(
    "--per",
    "period",
    default="day",
    show_default=True,
    help="Period: minute, hour, day, week, month or total (calendar periods, UTC by default).",
)
@click.option(
    "--scope",
    multiple=True,
    metavar="KEY=VALUE",
    help="Only calls with this model (a glob), provider, agent, tag or attribute; repeatable.",
)
@click.option(
    "--action",
    default="warn",
    show_default=True,
    help="warn (alerts only), block (stop calls before they are sent) or throttle.",
)
@click.option("--tz", help="IANA time zone of the period's boundaries, e.g. Europe/Paris.")
@click.option("--rate", is_flag=True, help="Count a rolling window of one period instead.")
@click.option(
    "--threshold",
    "thresholds",
    multiple=True,
    help="When alerts fire: 80%, $2.50, '1000000 tokens', $1/h; repeatable "
    "(default 50%, 80%, 100%).",
)
@click.option(
    "--include-estimate",
    is_flag=True,
    help="Also block a call whose estimate would pass the limit.",
)
@click.option("--webhook", help="POST each alert as JSON to this URL.")
@handle_errors
def budget_set(
    name: str,
    usd: str | None,
    tokens: int | None,
    period: str,
    scope: tuple[str, ...],
    action: str,
    tz: str | None,
    rate: bool,
    thresholds: tuple[str, ...],
    include_estimate: bool,
    webhook: str | None,
) -> None:
    """Add the budget NAME to config.toml, or replace it.

    \b
    Examples:
      modelforge budget set research-daily --usd 5 --per day --scope agent=researcher --action block
      modelforge budget set tokens-monthly --tokens 2000000 --per month
    """
    from modelforge.budgets import Budget, save_budget
    from modelforge.errors import BudgetError

    try:
        pairs = [item.partition("=") for item in scope]
        if any(not key or not sep for key, sep, _ in pairs):
            raise BudgetError(f"--scope: expected KEY=VALUE, got {scope!r}")
        made = Budget(
            usd=usd,
            tokens=tokens,
            period=period,
            action=action,
            name=name,
            scope={key: value for key, _, value in pairs},
            tz=tz,
            rate=rate or None,
            include_estimate=include_estimate,
            thresholds=thresholds or None,
            webhook=webhook,
        )
    except BudgetError as exc:
        raise click.UsageError(str(exc)) from None
    path = save_budget(made)
    click.echo(f"Saved {made!r} in {path}.")


@budget.command("list")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@handle_errors
def budget_list(as_json: bool) -> None:
    """List the budgets in config.toml (and any it ignores, with why)."""
    from modelforge.budgets import configured

    budgets = configured()
    if as_json:
        click.echo(json.dumps([b.as_table() for b in budgets], indent=2))
    for made in budgets:
        if not as_json:
            click.echo(repr(made))
    settings = config.load_settings(warn=False)
    for name, line in config.describe_problems(settings).items():
        if name.startswith("budget"):
            click.echo(f"Warning: {line}", err=True)
    if not budgets and not as_json:
        click.echo(f"No budgets in {config.config_path()}.")


@budget.command("rm")
@click.argument("name")
@handle_errors
def budget_rm(name: str) -> None:
    """Remove the budget NAME from config.toml."""
    from modelforge.budgets import remove_budget

    path = remove_budget(name)
    click.echo(f"Removed budget {name!r} from {path}.")


@budget.command("status")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@db_option
@handle_errors
def budget_status(as_json: bool, db: Path | None) -> None:
    """Where each budget in config.toml stands: spent, limit, % used, when the period
    resets, and a straight-line projection of the spend to the period's end.

    \b
    Example:
      modelforge budget status --json
    """
    from modelforge.budgets import configured, status

    rows = status(_open_log(db), configured())
    if as_json:
        click.echo(json.dumps([row.as_json() for row in rows], indent=2))
        return
    if not rows:
        click.echo(f"No budgets in {config.config_path()}.")
        return
    from rich.table import Table

    table = Table()
    for title in ("Budget", "Action", "Spent", "Limit", "Used", "Resets (UTC)", "Projected"):
        table.add_column(title, justify="left" if title in ("Budget", "Action") else "right")
    for row in rows:
        made = row.budget
        spent, limit, projected = [], [], []
        if made.usd is not None:
            spent.append(_money(row.spent_usd))
            limit.append(_money(made.usd))
            projected.append(_money(row.projected_usd))
        if made.tokens is not None:
            spent.append(f"{row.spent_tokens:,} tok")
            limit.append(f"{made.tokens:,} tok")
            tokens = row.projected_tokens
            projected.append("—" if tokens is None else f"{tokens:,} tok")
        resets = row.resets_at.strftime("%Y-%m-%d %H:%M") if row.resets_at else "never"
        table.add_row(
            made.name,
            made.action,
            " / ".join(spent),
            " / ".join(limit),
            f"{row.used_percent}%",
            resets,
            " / ".join(projected),
        )
    _console().print(table)


# --- reconcile ------------------------------------------------------------------------


@cli.command()
@click.option(
    "--provider", type=click.Choice(["openai", "anthropic"]), required=True, help="Whose billing."
)
@click.option(
    "--since", default="30d", show_default=True, help="First UTC day: 30d, 2026-11-01 or ISO time."
)
@click.option("--until", help="Up to this UTC day, not included (default: through today).")
@click.option(
    "--by",
    type=click.Choice(["day", "model"]),
    default="day",
    show_default=True,
    help="day: a row per UTC day and model; model: a row per model over the range.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Output JSON (schema modelforge.reconcile/1)."
)
@click.option(
    "--base-url",
    help="Admin API base URL (default: MODELFORGE_OPENAI_ADMIN_URL or "
    "MODELFORGE_ANTHROPIC_ADMIN_URL, else the provider's API).",
)
@db_option
@handle_errors
def reconcile(
    provider: str,
    since: str,
    until: str | None,
    by: str,
    as_json: bool,
    base_url: str | None,
    db: Path | None,
) -> None:
    """Compare the log's computed costs with what the provider billed.

    Fetches the provider's cost and usage reports (Admin API key from OPENAI_ADMIN_KEY
    or ANTHROPIC_ADMIN_KEY), stores them in the log's `billed` table, and lists billed
    against logged per UTC day and model. Rows that cannot match (days still inside
    the provider's reporting delay, models never logged, unpriced calls, batch and
    priority tiers) are explained and left out of the agreement figure.

    \b
    Examples:
      export OPENAI_ADMIN_KEY=sk-admin-...
      modelforge reconcile --provider openai
      modelforge reconcile --provider anthropic --since 2026-11-01 --until 2026-12-01
      modelforge reconcile --provider openai --by model --json
    """
    from modelforge.reconcile import reconcile as run_reconcile

    result = run_reconcile(provider, since, until, by=by, db=db, base_url=base_url)
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2))
        return
    from rich.table import Table

    table = Table()
    titles = (["Day"] if by == "day" else []) + ["Model", "Tier", "Billed", "Logged", "Diff"]
    for title in [*titles, "Diff %", "Verdict"]:
        table.add_column(
            title, justify="right" if title.startswith(("Billed", "Logged", "Diff")) else "left"
        )
    for row in result.rows:
        pct = "—" if row.diff_pct is None else f"{row.diff_pct:+.2f}%"
        cells = [row.day] if by == "day" else []
        cells += [row.model or "(not a model)", row.service_tier, _money(row.billed_usd)]
        diff = row.diff_usd
        diff_text = f"-{_money(-diff)}" if diff is not None and diff < 0 else _money(diff)
        cells += [_money(row.logged_usd), diff_text, pct, row.verdict]
        table.add_row(*cells)
    _console().print(table)
    for note in result.notes():
        click.echo(f"  {note}")
    click.echo(result.agreement.line())


# --- demo -----------------------------------------------------------------------------


@cli.command()
@click.option(
    "--db",
    "db",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Log file for the demo's calls (default: demo.db in the user data dir, never the "
    "usage log).",
)
@click.option("--live", is_flag=True, help="Call the real OpenAI and Anthropic APIs (needs keys).")
@handle_errors
def demo(db: Path | None, live: bool) -> None:
    """Run a small LangChain chain and show what it cost.

    Without --live it needs no API key and no network: a loopback server inside this
    process answers in the OpenAI and Anthropic wire formats, and the real
    ChatOpenAI and ChatAnthropic classes talk to it. Its calls go to a log of their
    own, so your usage log keeps only your calls.

    \b
    Examples:
      modelforge demo
      modelforge demo --db /tmp/demo.db
    """
    from modelforge.demo import run_demo

    try:
        result = run_demo(db=db, live=live)
    except ImportError as exc:
        raise click.ClickException(
            f"the demo needs LangChain's clients ({exc.name}): pip install 'model-forge[all]'"
        ) from None
    click.echo(result.summary)
    if not result.recording:
        click.echo("(telemetry is off: the calls above were not written to a log)")
        return
    if not result.written:
        click.echo(
            f"(the demo log {result.db} could not be written: the calls above were not "
            "recorded; choose another file with --db)"
        )
        return
    from modelforge import report
    from modelforge.store import open_db

    filters = report.Filters(where=[("demo_run", result.demo_run)])
    conn = open_db(result.db, create=False)
    _print_report(report.usage_report(conn, ["model"], filters), "table")
    click.echo(f"\nThe demo's calls are in their own log, {result.db}. Look at them with:")
    click.echo(f"  modelforge usage --db {result.db} --by model")
    click.echo(f"  modelforge usage efficiency --db {result.db} --by model")


@cli.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL.

    \b
    Example:
      eval "$(modelforge completion bash)"
    """
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    if cls is None:  # pragma: no cover - click ships all three
        raise click.ClickException(f"no completion for {shell}")
    click.echo(cls(cli, {}, "modelforge", "_MODELFORGE_COMPLETE").source())


if __name__ == "__main__":  # pragma: no cover
    main()
