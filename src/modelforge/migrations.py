"""Schema of the usage log, as plain migrations in order. Never edit a shipped one.

Each migration is literal SQL: it creates the same tables forever, whatever the rest of
the code says today. A schema change is a new migration at the end of `MIGRATIONS`.

Applied migrations are recorded in `_sqlite_migrations`, the table (and format) that
sqlite-utils' `Migrations("modelforge")` uses, so `sqlite-utils` tools read it as theirs.
We apply them with the small runner below rather than with sqlite-utils itself: that
imports pandas and numpy when they are installed, which kept a new log's first record
from reaching the file for up to 2.5 s on a busy machine.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime, timezone

MIGRATION_SET = "modelforge"
MIGRATIONS_TABLE = "_sqlite_migrations"


def m001_create_calls(db: sqlite3.Connection) -> None:
    """One row per model call: counts, exact costs and attribution, never any text."""
    db.execute(
        """CREATE TABLE "calls" (
   "id" INTEGER PRIMARY KEY,
   "ts" TEXT NOT NULL,
   "run_id" TEXT NOT NULL,
   "parent_run_id" TEXT,
   "trace_id" TEXT,
   "framework" TEXT,
   "operation" TEXT,
   "provider" TEXT,
   "model" TEXT,
   "response_model" TEXT,
   "catalog_model" TEXT,
   "input_tokens" INTEGER,
   "output_tokens" INTEGER,
   "cache_read_tokens" INTEGER,
   "cache_write_tokens" INTEGER,
   "cache_write_1h_tokens" INTEGER,
   "reasoning_tokens" INTEGER,
   "input_audio_tokens" INTEGER,
   "output_audio_tokens" INTEGER,
   "total_tokens" INTEGER,
   "cost_usd" TEXT,
   "cost_pusd" INTEGER,
   "cost_input" TEXT,
   "cost_cache_read" TEXT,
   "cost_cache_write" TEXT,
   "cost_output" TEXT,
   "cost_reasoning" TEXT,
   "cost_audio" TEXT,
   "priced" INTEGER,
   "price_source" TEXT,
   "price_flags" TEXT,
   "estimated" INTEGER,
   "estimate_method" TEXT,
   "cache_hit" INTEGER,
   "service_tier" TEXT,
   "status" TEXT,
   "error_type" TEXT,
   "latency_ms" REAL,
   "ttft_ms" REAL,
   "agent" TEXT,
   "run_name" TEXT,
   "tags" TEXT,
   "attrs" TEXT,
   "anomalies" TEXT
)"""
    )
    db.execute(
        """CREATE UNIQUE INDEX "idx_calls_run_id"
    ON "calls" ("run_id")"""
    )
    db.execute(
        """CREATE INDEX "idx_calls_report"
    ON "calls" ("ts", "provider", "model", "response_model", "agent", "input_tokens", """
        """"cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens", "output_tokens", """
        """"reasoning_tokens", "cost_pusd", "priced", "estimated", "status")"""
    )
    db.execute(
        "CREATE INDEX idx_calls_unpriced ON calls (response_model, model, provider) "
        "WHERE priced = 0"
    )


def m002_hourly_rollup(db: sqlite3.Connection) -> None:
    """Hourly totals kept by the writer (replaced by m003's trigger-kept rollup)."""
    db.execute(
        "CREATE TABLE calls_hourly (hour TEXT NOT NULL, provider TEXT NOT NULL, "
        "model TEXT NOT NULL, agent TEXT NOT NULL, status TEXT NOT NULL, "
        "priced INTEGER NOT NULL, estimated INTEGER NOT NULL, "
        "calls INTEGER NOT NULL DEFAULT 0, input_tokens INTEGER NOT NULL DEFAULT 0, "
        "cache_read_tokens INTEGER NOT NULL DEFAULT 0, "
        "cache_write_tokens INTEGER NOT NULL DEFAULT 0, "
        "output_tokens INTEGER NOT NULL DEFAULT 0, reasoning_tokens INTEGER NOT NULL DEFAULT 0, "
        "cost_pusd INTEGER NOT NULL DEFAULT 0, "
        "PRIMARY KEY (hour, provider, model, agent, status, priced, estimated)) WITHOUT ROWID"
    )
    db.execute(
        """CREATE TRIGGER calls_hourly_delete AFTER DELETE ON calls BEGIN
            UPDATE calls_hourly SET calls = calls - (1), input_tokens = input_tokens - (OLD.input_tokens), cache_read_tokens = cache_read_tokens - (OLD.cache_read_tokens), cache_write_tokens = cache_write_tokens - (OLD.cache_write_tokens + OLD.cache_write_1h_tokens), output_tokens = output_tokens - (OLD.output_tokens), reasoning_tokens = reasoning_tokens - (OLD.reasoning_tokens), cost_pusd = cost_pusd - (coalesce(OLD.cost_pusd, 0)) WHERE hour = substr(OLD.ts, 1, 13) AND provider = coalesce(OLD.provider, '') AND model = coalesce(OLD.response_model, OLD.model, '') AND agent = coalesce(OLD.agent, '') AND status = coalesce(OLD.status, '') AND priced = OLD.priced AND estimated = OLD.estimated;
        END"""  # noqa: E501 - the trigger's text as shipped, byte for byte
    )
    db.execute(
        "INSERT INTO calls_hourly (hour, provider, model, agent, status, priced, estimated, "
        "calls, input_tokens, cache_read_tokens, cache_write_tokens, output_tokens, "
        "reasoning_tokens, cost_pusd) "
        "SELECT substr(ts, 1, 13), coalesce(provider, ''), coalesce(response_model, model, ''), "
        "coalesce(agent, ''), coalesce(status, ''), priced, estimated, count(*), "
        "sum(input_tokens), sum(cache_read_tokens), "
        "sum(cache_write_tokens + cache_write_1h_tokens), sum(output_tokens), "
        "sum(reasoning_tokens), sum(coalesce(cost_pusd, 0)) FROM calls WHERE id > 0 "
        "GROUP BY 1, 2, 3, 4, 5, 6, 7"
    )


def m003_rollup_by_triggers(db: sqlite3.Connection) -> None:
    """Hourly totals kept by triggers, so rows written by any tool are counted.

    `calls_costed` is `calls` plus each call's cost as whole dollars and the rest in
    pico-dollars, both integers: a cost past SQLite's 64-bit pico-dollar range (over
    $9.2M for one call) keeps only its exact text in `cost_usd`, and is split from it.
    The rollup carries pico-dollars into dollars, so no sum can overflow.
    """
    db.execute("DROP TRIGGER calls_hourly_delete")
    db.execute("DROP TABLE calls_hourly")
    db.execute(
        """CREATE VIEW calls_costed AS SELECT calls.*,
    CASE
        WHEN cost_pusd IS NOT NULL THEN cost_pusd / 1000000000000
        WHEN typeof(cost_usd) IN ('integer', 'real') OR cost_usd LIKE '%e%'
            THEN CAST(CAST(cost_usd AS REAL) AS INTEGER)
        WHEN instr(cost_usd, '.') > 0
            THEN CAST(substr(cost_usd, 1, instr(cost_usd, '.') - 1) AS INTEGER)
        ELSE coalesce(CAST(cost_usd AS INTEGER), 0)
    END AS cost_usd_whole,
    CASE
        WHEN cost_pusd IS NOT NULL THEN cost_pusd % 1000000000000
        WHEN typeof(cost_usd) IN ('integer', 'real') OR cost_usd LIKE '%e%'
            THEN CAST(round((CAST(cost_usd AS REAL) - CAST(CAST(cost_usd AS REAL) AS INTEGER))
                * 1000000000000) AS INTEGER)
        WHEN instr(cost_usd, '.') > 0
            THEN CAST(substr(substr(cost_usd, instr(cost_usd, '.') + 1) || '000000000000',
                1, 12) AS INTEGER)
        ELSE 0
    END AS cost_pusd_frac
FROM calls"""
    )
    db.execute(
        """CREATE TABLE calls_hourly (
    hour TEXT NOT NULL,
    framework TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    catalog_model TEXT NOT NULL,
    agent TEXT NOT NULL,
    status TEXT NOT NULL,
    priced INTEGER NOT NULL,
    estimated INTEGER NOT NULL,
    calls INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cache_read_tokens INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    cache_write_1h_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    input_audio_tokens INTEGER NOT NULL,
    output_audio_tokens INTEGER NOT NULL,
    cost_usd_whole INTEGER NOT NULL,
    cost_pusd_frac INTEGER NOT NULL,
    PRIMARY KEY (hour, framework, provider, model, catalog_model, agent, status, priced,
        estimated)
) WITHOUT ROWID"""
    )
    # One row of the rollup's shape per call; NULL keys become '' because NULLs never
    # conflict in a primary key.
    db.execute(
        """CREATE VIEW calls_hourly_rows AS SELECT id,
    substr(ts, 1, 13) AS hour,
    coalesce(framework, '') AS framework,
    coalesce(provider, '') AS provider,
    coalesce(response_model, model, '') AS model,
    coalesce(catalog_model, '') AS catalog_model,
    coalesce(agent, '') AS agent,
    coalesce(status, '') AS status,
    coalesce(priced, cost_usd IS NOT NULL OR cost_pusd IS NOT NULL) AS priced,
    coalesce(estimated, 0) AS estimated,
    coalesce(input_tokens, 0) AS input_tokens,
    coalesce(output_tokens, 0) AS output_tokens,
    coalesce(cache_read_tokens, 0) AS cache_read_tokens,
    coalesce(cache_write_tokens, 0) AS cache_write_tokens,
    coalesce(cache_write_1h_tokens, 0) AS cache_write_1h_tokens,
    coalesce(reasoning_tokens, 0) AS reasoning_tokens,
    coalesce(input_audio_tokens, 0) AS input_audio_tokens,
    coalesce(output_audio_tokens, 0) AS output_audio_tokens,
    cost_usd_whole,
    cost_pusd_frac
FROM calls_costed"""
    )
    add = """INSERT INTO calls_hourly
    SELECT hour, framework, provider, model, catalog_model, agent, status, priced, estimated,
        1, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
        cache_write_1h_tokens, reasoning_tokens, input_audio_tokens, output_audio_tokens,
        cost_usd_whole, cost_pusd_frac
    FROM calls_hourly_rows WHERE id = NEW.id
    ON CONFLICT DO UPDATE SET
        calls = calls + 1,
        input_tokens = input_tokens + excluded.input_tokens,
        output_tokens = output_tokens + excluded.output_tokens,
        cache_read_tokens = cache_read_tokens + excluded.cache_read_tokens,
        cache_write_tokens = cache_write_tokens + excluded.cache_write_tokens,
        cache_write_1h_tokens = cache_write_1h_tokens + excluded.cache_write_1h_tokens,
        reasoning_tokens = reasoning_tokens + excluded.reasoning_tokens,
        input_audio_tokens = input_audio_tokens + excluded.input_audio_tokens,
        output_audio_tokens = output_audio_tokens + excluded.output_audio_tokens,
        cost_usd_whole = cost_usd_whole + excluded.cost_usd_whole
            + (cost_pusd_frac + excluded.cost_pusd_frac) / 1000000000000,
        cost_pusd_frac = (cost_pusd_frac + excluded.cost_pusd_frac) % 1000000000000;"""
    db.execute(f"CREATE TRIGGER calls_hourly_add AFTER INSERT ON calls BEGIN\n    {add}\nEND")
    # A row's old values are read before it goes; `calls_hourly_add` adds the new ones.
    subtract = """UPDATE calls_hourly SET
        calls = calls_hourly.calls - 1,
        input_tokens = calls_hourly.input_tokens - r.input_tokens,
        output_tokens = calls_hourly.output_tokens - r.output_tokens,
        cache_read_tokens = calls_hourly.cache_read_tokens - r.cache_read_tokens,
        cache_write_tokens = calls_hourly.cache_write_tokens - r.cache_write_tokens,
        cache_write_1h_tokens = calls_hourly.cache_write_1h_tokens - r.cache_write_1h_tokens,
        reasoning_tokens = calls_hourly.reasoning_tokens - r.reasoning_tokens,
        input_audio_tokens = calls_hourly.input_audio_tokens - r.input_audio_tokens,
        output_audio_tokens = calls_hourly.output_audio_tokens - r.output_audio_tokens,
        cost_usd_whole = calls_hourly.cost_usd_whole - r.cost_usd_whole
            - (CASE WHEN calls_hourly.cost_pusd_frac < r.cost_pusd_frac THEN 1 ELSE 0 END),
        cost_pusd_frac = calls_hourly.cost_pusd_frac - r.cost_pusd_frac
            + (CASE WHEN calls_hourly.cost_pusd_frac < r.cost_pusd_frac
                THEN 1000000000000 ELSE 0 END)
    FROM (SELECT * FROM calls_hourly_rows WHERE id = OLD.id) AS r
    WHERE calls_hourly.hour = r.hour AND calls_hourly.framework = r.framework
        AND calls_hourly.provider = r.provider AND calls_hourly.model = r.model
        AND calls_hourly.catalog_model = r.catalog_model AND calls_hourly.agent = r.agent
        AND calls_hourly.status = r.status AND calls_hourly.priced = r.priced
        AND calls_hourly.estimated = r.estimated;
    DELETE FROM calls_hourly WHERE calls = 0
        AND hour = (SELECT hour FROM calls_hourly_rows WHERE id = OLD.id);"""
    db.execute(
        f"CREATE TRIGGER calls_hourly_remove BEFORE DELETE ON calls BEGIN\n    {subtract}\nEND"
    )
    summed = (
        "ts, framework, provider, model, response_model, catalog_model, agent, status, "
        "priced, estimated, input_tokens, output_tokens, cache_read_tokens, "
        "cache_write_tokens, cache_write_1h_tokens, reasoning_tokens, input_audio_tokens, "
        "output_audio_tokens, cost_usd, cost_pusd"
    )
    db.execute(
        f"CREATE TRIGGER calls_hourly_update_old BEFORE UPDATE OF {summed} ON calls BEGIN\n"
        f"    {subtract}\nEND"
    )
    db.execute(
        f"CREATE TRIGGER calls_hourly_update_new AFTER UPDATE OF {summed} ON calls BEGIN\n"
        f"    {add}\nEND"
    )
    # Rebuild from every row. Pico-dollars are summed in two halves (millionths of a
    # dollar, and pico-dollars under a millionth) so no group's sum can overflow.
    db.execute(
        """INSERT INTO calls_hourly
SELECT hour, framework, provider, model, catalog_model, agent, status, priced, estimated,
    calls, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
    cache_write_1h_tokens, reasoning_tokens, input_audio_tokens, output_audio_tokens,
    whole + (micro + pico / 1000000) / 1000000,
    ((micro + pico / 1000000) % 1000000) * 1000000 + pico % 1000000
FROM (
    SELECT hour, framework, provider, model, catalog_model, agent, status, priced, estimated,
        count(*) AS calls, sum(input_tokens) AS input_tokens,
        sum(output_tokens) AS output_tokens, sum(cache_read_tokens) AS cache_read_tokens,
        sum(cache_write_tokens) AS cache_write_tokens,
        sum(cache_write_1h_tokens) AS cache_write_1h_tokens,
        sum(reasoning_tokens) AS reasoning_tokens,
        sum(input_audio_tokens) AS input_audio_tokens,
        sum(output_audio_tokens) AS output_audio_tokens,
        sum(cost_usd_whole) AS whole, sum(cost_pusd_frac / 1000000) AS micro,
        sum(cost_pusd_frac % 1000000) AS pico
    FROM calls_hourly_rows
    GROUP BY hour, framework, provider, model, catalog_model, agent, status, priced, estimated
)"""
    )


def m004_billed(db: sqlite3.Connection) -> None:
    """What the providers billed, as `modelforge reconcile` fetched it from their Admin APIs.

    One figure per UTC day, billing model name and line item: a cost (`amount_usd`, exact
    decimal text) or a token count (`tokens`). Each records the endpoint it came from and
    when it was fetched; a later fetch of the same days replaces them.
    """
    db.execute(
        """CREATE TABLE "billed" (
   "provider" TEXT NOT NULL,
   "day" TEXT NOT NULL,
   "model" TEXT NOT NULL,
   "line_item" TEXT NOT NULL,
   "token_class" TEXT NOT NULL,
   "service_tier" TEXT NOT NULL,
   "amount_usd" TEXT,
   "tokens" INTEGER,
   "source" TEXT NOT NULL,
   "fetched_at" TEXT NOT NULL,
   PRIMARY KEY ("provider", "day", "model", "line_item")
) WITHOUT ROWID"""
    )


def m005_context_window(db: sqlite3.Connection) -> None:
    """Each call's context window and how much of it the call's input used.

    `context_limit` is the window of the model that priced the call (NULL when unknown,
    never 0); `context_used` is the call's input tokens.
    """
    db.execute('ALTER TABLE "calls" ADD COLUMN "context_limit" INTEGER')
    db.execute('ALTER TABLE "calls" ADD COLUMN "context_used" INTEGER')


def m006_alerts(db: sqlite3.Connection) -> None:
    """Budget alerts that have fired: one row per budget, period and threshold, so each
    fires once even when several processes share the log (the first INSERT wins)."""
    db.execute(
        """CREATE TABLE "alerts" (
   "budget" TEXT NOT NULL,
   "period_start" TEXT NOT NULL,
   "threshold" TEXT NOT NULL,
   "fired_at" TEXT NOT NULL,
   "spent_usd" TEXT,
   "spent_tokens" INTEGER,
   "limit_usd" TEXT,
   "limit_tokens" INTEGER,
   PRIMARY KEY ("budget", "period_start", "threshold")
) WITHOUT ROWID"""
    )


def m007_daily_rollup_and_session_index(db: sqlite3.Connection) -> None:
    """Daily totals kept by triggers on the hourly rollup, each day's peak context use,
    and an index on the `session` attribute.

    `calls_daily` has `calls_hourly`'s keys with the day for the hour. Triggers on
    `calls_hourly` move each change of an hourly row into its day, so the day rows stay
    right whoever writes `calls`: a year of a busy log is some 15 thousand day rows
    instead of 370 thousand hour rows, and reports over whole days read those.

    `peak` is the largest share of its context window a call of the row filled (NULL:
    no call with a known window). A new call can only raise it; a call deleted or
    changed can lower it, which a trigger cannot recount cheaply, so its day goes into
    `calls_daily_stale` and reports recount that day's peak from `calls`.

    `track_usage(session=...)` records the `session` attribute; the index lets a resumed
    session and `usage watch --session` find its calls without a scan.
    """
    db.execute(
        """CREATE INDEX idx_calls_session ON calls (json_extract(attrs, '$.session'))
    WHERE json_extract(attrs, '$.session') IS NOT NULL"""
    )
    db.execute(
        """CREATE TABLE calls_daily (
    day TEXT NOT NULL,
    framework TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    catalog_model TEXT NOT NULL,
    agent TEXT NOT NULL,
    status TEXT NOT NULL,
    priced INTEGER NOT NULL,
    estimated INTEGER NOT NULL,
    calls INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cache_read_tokens INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    cache_write_1h_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    input_audio_tokens INTEGER NOT NULL,
    output_audio_tokens INTEGER NOT NULL,
    cost_usd_whole INTEGER NOT NULL,
    cost_pusd_frac INTEGER NOT NULL,
    peak REAL,
    PRIMARY KEY (day, framework, provider, model, catalog_model, agent, status, priced,
        estimated)
) WITHOUT ROWID"""
    )
    db.execute("CREATE TABLE calls_daily_stale (day TEXT PRIMARY KEY) WITHOUT ROWID")
    db.execute(
        """CREATE TRIGGER calls_daily_add AFTER INSERT ON calls_hourly BEGIN
    INSERT INTO calls_daily VALUES (substr(NEW.hour, 1, 10), NEW.framework, NEW.provider,
        NEW.model, NEW.catalog_model, NEW.agent, NEW.status, NEW.priced, NEW.estimated,
        NEW.calls, NEW.input_tokens, NEW.output_tokens, NEW.cache_read_tokens,
        NEW.cache_write_tokens, NEW.cache_write_1h_tokens, NEW.reasoning_tokens,
        NEW.input_audio_tokens, NEW.output_audio_tokens, NEW.cost_usd_whole,
        NEW.cost_pusd_frac, NULL)
    ON CONFLICT DO UPDATE SET
        calls = calls + excluded.calls,
        input_tokens = input_tokens + excluded.input_tokens,
        output_tokens = output_tokens + excluded.output_tokens,
        cache_read_tokens = cache_read_tokens + excluded.cache_read_tokens,
        cache_write_tokens = cache_write_tokens + excluded.cache_write_tokens,
        cache_write_1h_tokens = cache_write_1h_tokens + excluded.cache_write_1h_tokens,
        reasoning_tokens = reasoning_tokens + excluded.reasoning_tokens,
        input_audio_tokens = input_audio_tokens + excluded.input_audio_tokens,
        output_audio_tokens = output_audio_tokens + excluded.output_audio_tokens,
        cost_usd_whole = cost_usd_whole + excluded.cost_usd_whole
            + (cost_pusd_frac + excluded.cost_pusd_frac) / 1000000000000,
        cost_pusd_frac = (cost_pusd_frac + excluded.cost_pusd_frac) % 1000000000000;
END"""
    )
    # An hourly row changes only its sums (its keys never change): add the difference.
    # The pico-dollar part moves by less than a dollar, so one carry either way suffices.
    db.execute(
        """CREATE TRIGGER calls_daily_change AFTER UPDATE ON calls_hourly BEGIN
    UPDATE calls_daily SET
        calls = calls + NEW.calls - OLD.calls,
        input_tokens = input_tokens + NEW.input_tokens - OLD.input_tokens,
        output_tokens = output_tokens + NEW.output_tokens - OLD.output_tokens,
        cache_read_tokens = cache_read_tokens + NEW.cache_read_tokens - OLD.cache_read_tokens,
        cache_write_tokens = cache_write_tokens + NEW.cache_write_tokens
            - OLD.cache_write_tokens,
        cache_write_1h_tokens = cache_write_1h_tokens + NEW.cache_write_1h_tokens
            - OLD.cache_write_1h_tokens,
        reasoning_tokens = reasoning_tokens + NEW.reasoning_tokens - OLD.reasoning_tokens,
        input_audio_tokens = input_audio_tokens + NEW.input_audio_tokens
            - OLD.input_audio_tokens,
        output_audio_tokens = output_audio_tokens + NEW.output_audio_tokens
            - OLD.output_audio_tokens,
        cost_usd_whole = cost_usd_whole + NEW.cost_usd_whole - OLD.cost_usd_whole + (CASE
            WHEN cost_pusd_frac + NEW.cost_pusd_frac - OLD.cost_pusd_frac >= 1000000000000
                THEN 1
            WHEN cost_pusd_frac + NEW.cost_pusd_frac - OLD.cost_pusd_frac < 0 THEN -1
            ELSE 0 END),
        cost_pusd_frac = cost_pusd_frac + NEW.cost_pusd_frac - OLD.cost_pusd_frac + (CASE
            WHEN cost_pusd_frac + NEW.cost_pusd_frac - OLD.cost_pusd_frac >= 1000000000000
                THEN -1000000000000
            WHEN cost_pusd_frac + NEW.cost_pusd_frac - OLD.cost_pusd_frac < 0
                THEN 1000000000000
            ELSE 0 END)
    WHERE day = substr(NEW.hour, 1, 10) AND framework = NEW.framework
        AND provider = NEW.provider AND model = NEW.model
        AND catalog_model = NEW.catalog_model AND agent = NEW.agent
        AND status = NEW.status AND priced = NEW.priced AND estimated = NEW.estimated;
END"""
    )
    # m003 deletes an hourly row once its calls are 0, its sums with them; a row deleted
    # by hand takes its sums out of the day.
    db.execute(
        """CREATE TRIGGER calls_daily_remove AFTER DELETE ON calls_hourly BEGIN
    UPDATE calls_daily SET
        calls = calls - OLD.calls,
        input_tokens = input_tokens - OLD.input_tokens,
        output_tokens = output_tokens - OLD.output_tokens,
        cache_read_tokens = cache_read_tokens - OLD.cache_read_tokens,
        cache_write_tokens = cache_write_tokens - OLD.cache_write_tokens,
        cache_write_1h_tokens = cache_write_1h_tokens - OLD.cache_write_1h_tokens,
        reasoning_tokens = reasoning_tokens - OLD.reasoning_tokens,
        input_audio_tokens = input_audio_tokens - OLD.input_audio_tokens,
        output_audio_tokens = output_audio_tokens - OLD.output_audio_tokens,
        cost_usd_whole = cost_usd_whole - OLD.cost_usd_whole
            - (CASE WHEN cost_pusd_frac < OLD.cost_pusd_frac THEN 1 ELSE 0 END),
        cost_pusd_frac = cost_pusd_frac - OLD.cost_pusd_frac
            + (CASE WHEN cost_pusd_frac < OLD.cost_pusd_frac THEN 1000000000000 ELSE 0 END)
    WHERE day = substr(OLD.hour, 1, 10) AND framework = OLD.framework
        AND provider = OLD.provider AND model = OLD.model
        AND catalog_model = OLD.catalog_model AND agent = OLD.agent
        AND status = OLD.status AND priced = OLD.priced AND estimated = OLD.estimated;
    DELETE FROM calls_daily WHERE calls = 0 AND day = substr(OLD.hour, 1, 10);
END"""
    )
    # A call with a known window raises its day's peak; the day row may not be there
    # yet (the hourly trigger may fire after this one), so it is made with no calls and
    # the hourly trigger adds them.
    db.execute(
        """CREATE TRIGGER calls_daily_peak AFTER INSERT ON calls
    WHEN NEW.context_limit > 0 BEGIN
    INSERT INTO calls_daily
    SELECT substr(r.hour, 1, 10), r.framework, r.provider, r.model, r.catalog_model,
        r.agent, r.status, r.priced, r.estimated, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        CAST(NEW.context_used AS REAL) / NEW.context_limit
    FROM calls_hourly_rows AS r WHERE r.id = NEW.id
    ON CONFLICT DO UPDATE SET peak = max(coalesce(peak, excluded.peak), excluded.peak);
END"""
    )
    db.execute(
        """CREATE TRIGGER calls_daily_peak_gone AFTER DELETE ON calls
    WHEN OLD.context_limit > 0 BEGIN
    INSERT OR IGNORE INTO calls_daily_stale VALUES (substr(OLD.ts, 1, 10));
END"""
    )
    db.execute(
        """CREATE TRIGGER calls_daily_peak_changed AFTER UPDATE ON calls BEGIN
    INSERT OR IGNORE INTO calls_daily_stale VALUES (substr(OLD.ts, 1, 10));
    INSERT OR IGNORE INTO calls_daily_stale VALUES (substr(NEW.ts, 1, 10));
END"""
    )
    # Rebuild from the hourly rows, the pico-dollars summed in halves as in m003, and the
    # peaks from the calls.
    db.execute(
        """INSERT INTO calls_daily
SELECT day, framework, provider, model, catalog_model, agent, status, priced, estimated,
    calls, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
    cache_write_1h_tokens, reasoning_tokens, input_audio_tokens, output_audio_tokens,
    whole + (micro + pico / 1000000) / 1000000,
    ((micro + pico / 1000000) % 1000000) * 1000000 + pico % 1000000, NULL
FROM (
    SELECT substr(hour, 1, 10) AS day, framework, provider, model, catalog_model, agent,
        status, priced, estimated, sum(calls) AS calls, sum(input_tokens) AS input_tokens,
        sum(output_tokens) AS output_tokens, sum(cache_read_tokens) AS cache_read_tokens,
        sum(cache_write_tokens) AS cache_write_tokens,
        sum(cache_write_1h_tokens) AS cache_write_1h_tokens,
        sum(reasoning_tokens) AS reasoning_tokens,
        sum(input_audio_tokens) AS input_audio_tokens,
        sum(output_audio_tokens) AS output_audio_tokens,
        sum(cost_usd_whole) AS whole, sum(cost_pusd_frac / 1000000) AS micro,
        sum(cost_pusd_frac % 1000000) AS pico
    FROM calls_hourly
    GROUP BY 1, framework, provider, model, catalog_model, agent, status, priced, estimated
)"""
    )
    db.execute(
        """UPDATE calls_daily SET peak = p.peak
FROM (
    SELECT substr(r.hour, 1, 10) AS day, r.framework, r.provider, r.model,
        r.catalog_model, r.agent, r.status, r.priced, r.estimated,
        max(CAST(c.context_used AS REAL) / c.context_limit) AS peak
    FROM calls AS c JOIN calls_hourly_rows AS r ON r.id = c.id
    WHERE c.context_limit > 0
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
) AS p
WHERE calls_daily.day = p.day AND calls_daily.framework = p.framework
    AND calls_daily.provider = p.provider AND calls_daily.model = p.model
    AND calls_daily.catalog_model = p.catalog_model AND calls_daily.agent = p.agent
    AND calls_daily.status = p.status AND calls_daily.priced = p.priced
    AND calls_daily.estimated = p.estimated"""
    )


Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: tuple[Migration, ...] = (
    m001_create_calls,
    m002_hourly_rollup,
    m003_rollup_by_triggers,
    m004_billed,
    m005_context_window,
    m006_alerts,
    m007_daily_rollup_and_session_index,
)
MIGRATION_NAMES = tuple(m.__name__ for m in MIGRATIONS)


def applied(db: sqlite3.Connection) -> list[str]:
    """Names of the migrations of our set this file has had, in the order applied."""
    exists = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [MIGRATIONS_TABLE]
    ).fetchone()
    if not exists:
        return []
    rows = db.execute(
        f"SELECT name FROM {MIGRATIONS_TABLE} WHERE migration_set = ? ORDER BY id",
        [MIGRATION_SET],
    )
    return [name for (name,) in rows]


def pending(db: sqlite3.Connection) -> list[Migration]:
    done = set(applied(db))
    return [m for m in MIGRATIONS if m.__name__ not in done]


def apply(db: sqlite3.Connection, *, stop_after: str | None = None) -> None:
    """Apply each pending migration in a transaction of its own, with its record.

    `db` must be in autocommit mode (`isolation_level=None`). `stop_after` (for tests)
    names the last migration to apply.
    """
    for migration in pending(db):
        db.execute("BEGIN IMMEDIATE")
        try:
            _ensure_migrations_table(db)
            migration(db)
            db.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} (migration_set, name, applied_at) "
                "VALUES (?, ?, ?)",
                [MIGRATION_SET, migration.__name__, str(datetime.now(timezone.utc))],
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        # Each migration rewrites the schema's pages: copy them into the file before the
        # next, so the WAL of a new log stays the size of one migration, not of all.
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        if migration.__name__ == stop_after:
            return


def _ensure_migrations_table(db: sqlite3.Connection) -> None:
    # The table sqlite-utils' Migrations creates, to the byte.
    db.execute(
        f"""CREATE TABLE IF NOT EXISTS "{MIGRATIONS_TABLE}" (
   "id" INTEGER PRIMARY KEY,
   "migration_set" TEXT,
   "name" TEXT,
   "applied_at" TEXT
)"""
    )
    db.execute(
        f"""CREATE UNIQUE INDEX IF NOT EXISTS "idx_{MIGRATIONS_TABLE}_migration_set_name"
    ON "{MIGRATIONS_TABLE}" ("migration_set", "name")"""
    )
