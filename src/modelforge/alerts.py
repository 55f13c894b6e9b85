"""Budget alerts: each threshold fires once per period, across every process sharing a
log, delivered by `logging`, callbacks and an optional webhook.

The start-of-call check (and the end of each call) only queues an alert. A background
thread then claims it in the log's `alerts` table, where the first process to insert
the row wins, logs one WARNING and calls the callbacks; another thread POSTs webhooks,
with a timeout and retries. So nothing here can delay or break a model call. With
recording off there is no shared log, and an alert fires once per process.

>>> from modelforge import on_alert
>>> seen = []
>>> _ = on_alert(seen.append)  # every budget's alerts, as `BudgetAlert`s
>>> remove_on_alert(seen.append)
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import queue
import sqlite3
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from modelforge import config
from modelforge.errors import UsageLogError
from modelforge.money import money_text
from modelforge.records import format_ts

logger = logging.getLogger("modelforge")

WEBHOOK_TIMEOUT = 5.0
WEBHOOK_ATTEMPTS = 3
WEBHOOK_BACKOFF = 1.0  # seconds before the second attempt, doubled for each later one
EXIT_WAIT = 2.0

AlertCallback = Callable[["BudgetAlert"], object]


@dataclass(frozen=True)
class BudgetAlert:
    """One alert: a budget's spend crossed one of its thresholds this period.

    `threshold` is its key: "80%", "$2.5", "1000000 tokens", "$1/h" or "50000 tokens/h".
    Spend is the period's, when the alert was raised; `hourly_*` (rate thresholds only)
    is what the last 60 minutes spent.
    """

    budget: str
    threshold: str
    action: str
    period: str
    period_start: datetime | None
    resets_at: datetime | None
    spent_usd: Decimal
    spent_tokens: int
    limit_usd: Decimal | None
    limit_tokens: int | None
    scope: Mapping[str, str] = field(default_factory=dict)
    hourly_usd: Decimal | None = None
    hourly_tokens: int | None = None
    fired_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    def message(self) -> str:
        """One line, as the WARNING logs it."""
        spent = []
        if self.limit_usd is not None or self.limit_tokens is None:
            limit = f" of ${money_text(self.limit_usd)}" if self.limit_usd is not None else ""
            spent.append(f"${money_text(self.spent_usd)}{limit}")
        if self.limit_tokens is not None:
            spent.append(f"{self.spent_tokens:,} of {self.limit_tokens:,} tokens")
        period = "in total" if self.period == "total" else f"this {self.period}"
        text = f"{', '.join(spent)} {period}"
        if self.hourly_usd is not None and self.hourly_tokens is not None:
            hourly = f"${money_text(self.hourly_usd)} and {self.hourly_tokens:,} tokens"
            text = f"{hourly} in the last hour; {text}"
        where = " (" + ", ".join(f"{k}={v}" for k, v in self.scope.items()) + ")"
        resets = f"; resets {format_ts(self.resets_at)}" if self.resets_at else ""
        return (
            f"budget {self.budget!r}{where if self.scope else ''} reached {self.threshold}: "
            f"{text}{resets} [{self.action}]"
        )

    def as_json(self) -> dict[str, Any]:
        """The webhook's body: money as exact decimal text, times as UTC ISO-8601."""

        def when(moment: datetime | None) -> str | None:
            return format_ts(moment) if moment else None

        def usd(amount: Decimal | None) -> str | None:
            return money_text(amount) if amount is not None else None

        return {
            "schema": "modelforge.alert/1",
            "budget": self.budget,
            "threshold": self.threshold,
            "action": self.action,
            "period": self.period,
            "period_start": when(self.period_start),
            "resets_at": when(self.resets_at),
            "spent_usd": usd(self.spent_usd),
            "spent_tokens": self.spent_tokens,
            "limit_usd": usd(self.limit_usd),
            "limit_tokens": self.limit_tokens,
            "hourly_usd": usd(self.hourly_usd),
            "hourly_tokens": self.hourly_tokens,
            "scope": dict(self.scope),
            "fired_at": when(self.fired_at),
            "message": self.message(),
        }


# --- callbacks for every budget -------------------------------------------------------

_callbacks: list[AlertCallback] = []
_callbacks_lock = threading.Lock()


def on_alert(fn: AlertCallback) -> AlertCallback:
    """Call `fn(alert)` for every budget's alerts (on a background thread); returns `fn`,
    so it also works as a decorator."""
    with _callbacks_lock:
        if fn not in _callbacks:
            _callbacks.append(fn)
    return fn


def remove_on_alert(fn: AlertCallback) -> None:
    """Stop calling a callback given to `on_alert`."""
    with _callbacks_lock:
        if fn in _callbacks:
            _callbacks.remove(fn)


# --- background workers ---------------------------------------------------------------


class _Worker:
    """A daemon thread running jobs in order, started on first use (and again in a
    forked child, which has no threads)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._unfinished = 0

    def put(self, job: Callable[[], None]) -> None:
        with self._lock:
            self._unfinished += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
        self._queue.put(job)

    def wait(self, timeout: float | None) -> bool:
        """Wait until every job queued so far has run; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._unfinished == 0, timeout)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                job()
            except Exception as exc:  # a job must never end the thread
                config.warn_once(f"{self.name}:{type(exc).__name__}", f"{self.name}: {exc!r}")
            finally:
                with self._idle:
                    self._unfinished -= 1
                    self._idle.notify_all()


_alerts = _Worker("modelforge-alerts")
_webhooks = _Worker("modelforge-webhooks")


def queue_alert(
    alert: BudgetAlert,
    *,
    log: str | None,
    on_alert: AlertCallback | None = None,
    webhook: str | None = None,
) -> None:
    """Fire `alert` in the background unless another process sharing `log` (None: no
    shared log) already has this period."""
    _alerts.put(lambda: _fire(alert, log, on_alert, webhook))


def flush_alerts(timeout: float | None = 10.0) -> bool:
    """Wait until every queued alert has been delivered, webhooks included (each webhook
    gives up after its retries); False on timeout."""
    if not _alerts.wait(timeout):
        return False
    return _webhooks.wait(timeout)


def _fire(
    alert: BudgetAlert, log: str | None, on_alert: AlertCallback | None, webhook: str | None
) -> None:
    if log is not None and not _claim(log, alert):
        return
    logger.warning("modelforge: %s", alert.message())
    with _callbacks_lock:
        callbacks = [*_callbacks]
    if on_alert is not None:
        callbacks.insert(0, on_alert)
    for callback in callbacks:
        try:
            callback(alert)
        except Exception as exc:
            config.warn_once(
                f"alert-callback:{type(exc).__name__}",
                f"an alert callback failed and was skipped ({type(exc).__name__}: {exc})",
            )
    if webhook:
        _webhooks.put(lambda: _post(webhook, alert.as_json()))


# --- claiming an alert in the log ------------------------------------------------------

_claimers: dict[str, sqlite3.Connection] = {}


def _claim(log: str, alert: BudgetAlert) -> bool:
    """Whether this process is the first to fire `alert` this period: the `alerts`
    table's primary key lets one INSERT through."""
    try:
        conn = _claimers.get(log)
        if conn is None:
            from modelforge.store import open_db

            conn = _claimers[log] = open_db(log, create=True)
        cursor = conn.execute(
            "INSERT INTO alerts (budget, period_start, threshold, fired_at, spent_usd, "
            "spent_tokens, limit_usd, limit_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            [
                alert.budget,
                format_ts(alert.period_start) if alert.period_start else "",
                alert.threshold,
                format_ts(alert.fired_at),
                money_text(alert.spent_usd),
                alert.spent_tokens,
                money_text(alert.limit_usd),
                alert.limit_tokens,
            ],
        )
    except (sqlite3.Error, OSError, UsageLogError) as exc:
        # Firing twice beats never firing.
        config.warn_once(f"alerts:{log}", f"cannot record alerts in {log} ({exc}); firing anyway")
        with contextlib.suppress(KeyError):
            _claimers.pop(log).close()
        return True
    return cursor.rowcount == 1


# --- webhooks --------------------------------------------------------------------------


def _post(url: str, body: dict[str, Any]) -> None:
    """POST `body` as JSON, retrying; failures are logged without the URL's path or
    query, where webhook services keep their secret."""
    data = json.dumps(body).encode()
    done = threading.Event()  # never set: its wait() is an interruptible sleep
    problem = ""
    for attempt in range(WEBHOOK_ATTEMPTS):
        if attempt:
            done.wait(WEBHOOK_BACKOFF * 2 ** (attempt - 1))
        request = urllib.request.Request(
            url, data=data, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT) as response:
                if 200 <= response.status < 300:
                    return
                problem = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            problem = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            problem = type(exc).__name__
    logger.warning(
        "modelforge: alert webhook %s failed after %d attempts (%s); the alert was still "
        "logged and its callbacks called",
        redacted(url),
        WEBHOOK_ATTEMPTS,
        problem,
    )


def redacted(url: str) -> str:
    """A URL with only its scheme and host: paths and queries often hold a token."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…"


def _at_exit() -> None:
    _alerts.wait(EXIT_WAIT)
    _webhooks.wait(EXIT_WAIT)


def _after_fork_in_child() -> None:
    # The parent's threads are gone and its connections are not ours to use.
    global _alerts, _webhooks
    _alerts = _Worker("modelforge-alerts")
    _webhooks = _Worker("modelforge-webhooks")
    _claimers.clear()


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
