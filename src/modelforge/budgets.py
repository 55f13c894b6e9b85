"""Budgets: limits on spend, checked at the start of every call, and their alerts.

A `Budget` caps the USD cost and/or the tokens of the calls its scope picks, over a
calendar period (in UTC unless `tz=` says otherwise) or, with `rate=True`, a rolling
window. The LangChain and LlamaIndex handlers call `check()` before a request is sent:
a `block` budget that has been reached raises `BudgetExceededError` there, a `throttle`
budget waits for its window to allow the call, and `warn` lets it through. Thresholds
(50, 80 and 100 % by default) fire alerts once per period (`modelforge.alerts`).

The spend comes from the usage log, so every process writing one log shares its
budgets (`modelforge.meters` says how it is read, and why the overshoot is at most one
in-flight call per concurrent caller). `recorder.deliver` hands each finished call to
`note()`. With recording off there is no log: budgets count this process's calls only.
"""

from __future__ import annotations

import fnmatch
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone, tzinfo
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from modelforge import config
from modelforge.alerts import AlertCallback, BudgetAlert, queue_alert
from modelforge.errors import BudgetError, BudgetExceededError, ModelForgeError
from modelforge.meters import (
    NOTHING,
    SECONDS,
    Entry,
    LogRead,
    Meter,
    Spec,
    Spend,
    Window,
    any_meters,
    in_pico,
    log_path,
    logged_spend,
    meter_for,
    meters_of,
    period_window,
)
from modelforge.money import money_text
from modelforge.records import CallRecord, format_ts

if TYPE_CHECKING:
    from modelforge.session import UsageSession

__all__ = [
    "Budget",
    "BudgetStatus",
    "CallFacts",
    "Clock",
    "SystemClock",
    "Threshold",
    "applicable",
    "check",
    "configured",
    "estimate_call",
    "note",
    "remove_budget",
    "save_budget",
    "status",
]

PERIODS = ("minute", "hour", "day", "week", "month", "total")
ACTIONS = ("warn", "block", "throttle")
DEFAULT_THRESHOLDS = ("50%", "80%", "100%")
DEFAULT_MAX_WAIT = 30.0
# A throttle re-reads the log this often (seconds) while it waits.
THROTTLE_POLL = 1.0
_NAME = re.compile(r"^\S[^\x00-\x1f\x7f]{0,99}$")


# --- thresholds -----------------------------------------------------------------------

_THRESHOLD = re.compile(
    r"^(?:(?P<percent>\d+(?:\.\d+)?)\s*%"
    r"|\$\s*(?P<usd>\d+(?:\.\d+)?)(?P<usd_rate>\s*/\s*h(?:our)?)?"
    r"|(?P<tokens>\d[\d_,]*)\s*tokens?(?P<tokens_rate>\s*/\s*h(?:our)?)?)$"
)


@dataclass(frozen=True, slots=True)
class Threshold:
    """When an alert fires: `percent` of a budget's limit, spend this period in `usd` or
    `tokens`, or an hourly rate (what the last 60 minutes spent) in `usd_per_hour` or
    `tokens_per_hour`. Written as text: "80%", "$2.50", "1000000 tokens", "$1/h",
    "50000 tokens/h"; a bare number is a percentage.

    >>> Threshold.parse("$1.50/h")
    Threshold(kind='usd_per_hour', value=Decimal('1.50'))
    >>> Threshold.parse(80).key
    '80%'
    """

    kind: str
    value: Decimal

    @property
    def key(self) -> str:
        """Its canonical text: how alerts, the `alerts` table and config name it."""
        value = self.value
        if self.kind == "percent":
            return f"{money_text(value)}%"
        if self.kind in ("usd", "usd_per_hour"):
            return f"${money_text(value)}" + ("/h" if self.kind == "usd_per_hour" else "")
        return f"{int(value)} tokens" + ("/h" if self.kind == "tokens_per_hour" else "")

    @property
    def hourly(self) -> bool:
        return self.kind.endswith("_per_hour")

    @classmethod
    def parse(cls, spec: int | float | str | Decimal | Threshold) -> Threshold:
        if isinstance(spec, Threshold):
            return spec
        if isinstance(spec, bool):
            raise BudgetError(f"threshold {spec!r}: give a percentage, '$2.50' or '1000 tokens'")
        if isinstance(spec, (int, float, Decimal)):
            return cls("percent", _decimal(spec, "threshold"))
        match = _THRESHOLD.match(str(spec).strip().lower())
        if match is None:
            raise BudgetError(
                f"threshold {spec!r}: use '80%', '$2.50', '1000000 tokens', '$1/h' or "
                "'50000 tokens/h'"
            )
        if match["percent"]:
            return cls("percent", Decimal(match["percent"]))
        if match["usd"]:
            return cls("usd_per_hour" if match["usd_rate"] else "usd", Decimal(match["usd"]))
        count = Decimal(int(match["tokens"].replace("_", "").replace(",", "")))
        return cls("tokens_per_hour" if match["tokens_rate"] else "tokens", count)


class _Mark(NamedTuple):
    """A threshold as the spend that reaches it, precomputed for the check."""

    key: str
    hourly: bool
    pico: int | None
    tokens: int | None

    def reached(self, spent: Spend) -> bool:
        return (self.pico is not None and spent.pico >= self.pico) or (
            self.tokens is not None and spent.tokens >= self.tokens
        )


def _share(percent: Decimal, limit: int) -> int:
    return int((percent * limit / 100).to_integral_value(ROUND_CEILING))


# --- the clock ------------------------------------------------------------------------


class Clock(Protocol):
    """Where a budget reads the time and how a throttle waits; tests pass a fake one."""

    def now(self) -> datetime: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: UTC now, `time.sleep`."""

    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


# --- what a scope can match -----------------------------------------------------------


class CallFacts(NamedTuple):
    """What a budget's scope can match in a call, known when it starts (the requested
    model) or ends (the model that answered, as the log records it)."""

    model: str | None = None
    provider: str | None = None
    agent: str | None = None
    tags: tuple[str, ...] = ()
    attrs: Mapping[str, str] | None = None

    @classmethod
    def of_record(cls, record: CallRecord) -> CallFacts:
        return cls(
            model=record.response_model or record.model,
            provider=record.provider,
            agent=record.agent,
            tags=record.tags,
            attrs=record.attrs,
        )


def _matches(scope: tuple[tuple[str, str], ...], call: CallFacts) -> bool:
    for key, wanted in scope:
        if key == "model":
            if call.model is None or not fnmatch.fnmatchcase(call.model, wanted):
                return False
        elif key == "provider" or key == "agent":
            if getattr(call, key) != wanted:
                return False
        elif key == "tag":
            if wanted not in call.tags:
                return False
        elif (call.attrs or {}).get(key) != wanted:
            return False
    return True


# --- Budget ---------------------------------------------------------------------------


class Budget:
    """A limit on what the calls its `scope` picks may spend over a `period`.

    >>> Budget(usd="5.00", period="day", action="block", name="research-daily",
    ...        scope={"agent": "researcher"})
    Budget('research-daily': $5 per day, block, agent=researcher)

    Pass budgets to a handler (`UsageCallbackHandler(budgets=[...])`,
    `LlamaIndexCallbackHandler(budgets=[...])`) or to `track_usage(budgets=[...])`, or
    keep them in config.toml (`[[budget]]`), where they apply to every call. Treat a
    budget as immutable.

    Args:
        usd: the limit in USD (a `Decimal`, or text such as "5.00").
        tokens: the limit in tokens, input plus output (cache and reasoning included).
            At least one of `usd` and `tokens` is required; with both, the first reached
            counts.
        period: minute, hour, day, week (from Monday), month or total.
        action: warn (alerts only), block (raise `BudgetExceededError` before the
            request is sent, once the period's spend has reached the limit) or throttle
            (wait, up to `max_wait`, for the rolling window to allow the call; then
            block).
        name: how errors, alerts and `modelforge budget` name it; made from the limits
            when not given. Processes sharing a log share alerts by name.
        scope: which calls count and are checked, all keys matching: `model` (a glob
            on the model the log records, e.g. "gpt-4o*"), `provider`, `agent`, `tag`,
            or any recorded attribute (`project`, `user_id`…). Empty: every call.
        tz: an IANA time zone for the period's boundaries (default UTC).
        rate: True counts a rolling window of one period (the last 60 minutes, not this
            hour). Throttle budgets are always rolling.
        include_estimate: also block when the spend so far plus this call's estimate
            (its prompt counted, plus `max_tokens` of output, each at its price) would
            pass the limit.
        thresholds: when alerts fire: "80%" (or 80), "$2.50", "1000000 tokens", or the
            hourly rates "$1/h" and "50000 tokens/h". Default 50, 80 and 100 %.
        on_alert: called with each `BudgetAlert`, on a background thread.
        webhook: a URL each alert is POSTed to as JSON, on a background thread.
        max_wait: how long a throttle waits, in seconds, before it blocks.
        clock: the time source (`now()`, `sleep()`); tests pass a fake one.
    """

    def __init__(
        self,
        *,
        usd: Decimal | str | int | None = None,
        tokens: int | None = None,
        period: str = "day",
        action: str = "warn",
        name: str | None = None,
        scope: Mapping[str, Any] | None = None,
        tz: str | None = None,
        rate: bool | None = None,
        include_estimate: bool = False,
        thresholds: Sequence[int | float | str | Decimal | Threshold] | None = None,
        on_alert: AlertCallback | None = None,
        webhook: str | None = None,
        max_wait: float = DEFAULT_MAX_WAIT,
        clock: Clock | None = None,
    ) -> None:
        if usd is None and tokens is None:
            raise BudgetError("a budget needs usd=, tokens= or both")
        self.usd = None if usd is None else _decimal(usd, "usd")
        if tokens is not None and (
            isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0
        ):
            raise BudgetError(f"tokens must be a whole number ≥ 0, not {tokens!r}")
        self.tokens = tokens
        if period not in PERIODS:
            raise BudgetError(f"period {period!r}: use one of {', '.join(PERIODS)}")
        if action not in ACTIONS:
            raise BudgetError(f"action {action!r}: use one of {', '.join(ACTIONS)}")
        if rate is False and action == "throttle":
            raise BudgetError("a throttle budget waits for a rolling window: drop rate=False")
        rolling = bool(rate) or action == "throttle"
        if rolling and period not in SECONDS:
            raise BudgetError(f"a rolling window is a minute, hour, day or week, not {period!r}")
        self.period, self.action, self.rate = period, action, rolling
        self.scope = _scope(scope)
        self.tz = tz
        self.zone = _zone(tz)
        self.include_estimate = bool(include_estimate)
        specs = DEFAULT_THRESHOLDS if thresholds is None else thresholds
        self.thresholds = tuple(dict.fromkeys(Threshold.parse(t) for t in specs))
        self.on_alert = on_alert
        if webhook is not None and not (
            isinstance(webhook, str) and webhook.startswith(("https://", "http://"))
        ):
            raise BudgetError("webhook must be an http:// or https:// URL")
        self.webhook = webhook
        if not (isinstance(max_wait, (int, float)) and 0 <= max_wait < float("inf")):
            raise BudgetError(f"max_wait must be a number of seconds ≥ 0, not {max_wait!r}")
        self.max_wait = float(max_wait)
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.name = name if name is not None else self._default_name()
        if not _NAME.match(self.name):
            raise BudgetError(f"name {self.name!r}: 1 to 100 printable characters")
        limit_pico = None if self.usd is None else in_pico(self.usd)
        self._spec = Spec(
            tuple(sorted(self.scope.items())), period, rolling, tz or "UTC", limit_pico, tokens
        )
        self._marks = tuple(self._mark(t) for t in self.thresholds)
        self._meters: dict[str, Meter] = {}

    def _mark(self, threshold: Threshold) -> _Mark:
        value, spec = threshold.value, self._spec
        if threshold.kind == "percent":
            pico = None if spec.usd_pico is None else _share(value, spec.usd_pico)
            tokens = None if spec.tokens is None else _share(value, spec.tokens)
            return _Mark(threshold.key, False, pico, tokens)
        if threshold.kind in ("usd", "usd_per_hour"):
            return _Mark(threshold.key, threshold.hourly, in_pico(value), None)
        return _Mark(threshold.key, threshold.hourly, None, int(value))

    def _default_name(self) -> str:
        text = f"{self._limits()} per {'rolling ' if self.rate else ''}{self.period}"
        if self.scope:
            text += " " + ",".join(f"{k}={v}" for k, v in self.scope.items())
        return text[:100]

    def _limits(self) -> str:
        parts = []
        if self.usd is not None:
            parts.append(f"${money_text(self.usd)}")
        if self.tokens is not None:
            parts.append(f"{self.tokens} tokens")
        return " + ".join(parts)

    def __repr__(self) -> str:
        scope = "".join(f", {k}={v}" for k, v in self.scope.items())
        per = f"{'rolling ' if self.rate else ''}{self.period}"
        return f"Budget({self.name!r}: {self._limits()} per {per}, {self.action}{scope})"

    def matches(self, call: CallFacts) -> bool:
        """Whether `call` is one this budget counts and checks."""
        return _matches(self._spec.scope, call)

    def window(self, now: datetime | None = None) -> Window:
        """The span this budget counts at `now` (default: its clock's now)."""
        return period_window(self.period, self.rate, self.zone, now or self.clock.now())

    # --- config.toml -------------------------------------------------------------------

    def as_table(self) -> dict[str, Any]:
        """The budget as a `[[budget]]` table of config.toml (callbacks and clock aside)."""
        table: dict[str, Any] = {"name": self.name}
        if self.usd is not None:
            table["usd"] = money_text(self.usd)
        if self.tokens is not None:
            table["tokens"] = self.tokens
        table["period"] = self.period
        table["action"] = self.action
        if self.scope:
            table["scope"] = dict(self.scope)
        if self.tz:
            table["tz"] = self.tz
        if self.rate and self.action != "throttle":
            table["rate"] = True
        if self.include_estimate:
            table["include_estimate"] = True
        keys = [t.key for t in self.thresholds]
        if keys != list(DEFAULT_THRESHOLDS):
            table["thresholds"] = keys
        if self.webhook:
            table["webhook"] = self.webhook
        if self.max_wait != DEFAULT_MAX_WAIT:
            table["max_wait"] = self.max_wait
        return table

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> Budget:
        """A budget from a `[[budget]]` table; BudgetError names what is wrong."""
        unknown = set(table) - _TABLE_KEYS
        if unknown:
            raise BudgetError(f"unknown key(s) {', '.join(sorted(unknown))}")
        expected = {"name": str, "period": str, "action": str, "tz": str, "webhook": str}
        for key, kind in expected.items():
            if key in table and not isinstance(table[key], kind):
                raise BudgetError(f"{key} must be text")
        for key in ("rate", "include_estimate"):
            if key in table and not isinstance(table[key], bool):
                raise BudgetError(f"{key} must be true or false")
        scope = table.get("scope", {})
        if not isinstance(scope, Mapping):
            raise BudgetError('scope must be a table, e.g. scope = { agent = "researcher" }')
        thresholds = table.get("thresholds")
        if thresholds is not None and not isinstance(thresholds, list):
            raise BudgetError('thresholds must be a list, e.g. ["50%", "$2"]')
        if "name" not in table:
            raise BudgetError("name is required")
        return cls(
            usd=table.get("usd"),
            tokens=table.get("tokens"),
            period=table.get("period", "day"),
            action=table.get("action", "warn"),
            name=table["name"],
            scope=scope,
            tz=table.get("tz"),
            rate=table.get("rate"),
            include_estimate=table.get("include_estimate", False),
            thresholds=thresholds,
            webhook=table.get("webhook"),
            max_wait=table.get("max_wait", DEFAULT_MAX_WAIT),
        )

    # --- internals ----------------------------------------------------------------------

    def _meter(self, path: str) -> Meter:
        meter = self._meters.get(path)
        if meter is None:
            meter = self._meters[path] = meter_for(path, self._spec, self.zone)
            meter.budgets.add(self)
        return meter

    def _hourly_meter(self, path: str) -> Meter:
        spec = replace(self._spec, period="hour", rolling=True, usd_pico=None, tokens=None)
        return meter_for(path, spec, self.zone)

    def _over(self, spent: Spend, extra: Spend | None) -> bool:
        """Reached (spend so far at the limit), or passed with this call's estimate."""
        spec = self._spec
        if spec.usd_pico is not None and (
            spent.pico >= spec.usd_pico
            or (extra is not None and spent.pico + extra.pico > spec.usd_pico)
        ):
            return True
        return spec.tokens is not None and (
            spent.tokens >= spec.tokens
            or (extra is not None and spent.tokens + extra.tokens > spec.tokens)
        )

    def _exceeded(
        self, spent: Spend, window: Window, now: datetime, extra: Spend | None, waited: float
    ) -> BudgetExceededError:
        resets: datetime | None
        if self.rate:
            resets = now + timedelta(seconds=SECONDS[self.period])
            period = f"in the last {self.period}"
        else:
            resets = window.end
            period = "in total" if self.period == "total" else f"this {self.period}"
        figures = []
        if self.usd is not None:
            figures.append(f"${money_text(spent.usd)} of ${money_text(self.usd)}")
        if self.tokens is not None:
            figures.append(f"{spent.tokens:,} of {self.tokens:,} tokens")
        text = f"budget {self.name!r} reached: {' and '.join(figures)} spent {period}"
        if extra is not None and not self._over(spent, None):
            text += (
                f"; this call's estimate (${money_text(extra.usd)}, {extra.tokens:,} tokens) "
                "would pass it"
            )
        if waited:
            text += f"; waited {waited:g} s"
        if resets is not None:
            text += f"; resets at {format_ts(resets)}"
        return BudgetExceededError(self, spent.usd, spent.tokens, resets, text)


_TABLE_KEYS = frozenset(
    {
        "name",
        "usd",
        "tokens",
        "period",
        "action",
        "scope",
        "tz",
        "rate",
        "include_estimate",
        "thresholds",
        "webhook",
        "max_wait",
    }
)


def _decimal(value: Any, what: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (Decimal, str, int, float)):
        raise BudgetError(f"{what} must be a number or decimal text, not {value!r}")
    try:
        amount = Decimal(str(value).strip().lstrip("$"))
    except InvalidOperation:
        raise BudgetError(f"{what} {value!r} is not a number") from None
    if not amount.is_finite() or amount < 0:
        raise BudgetError(f"{what} must be a finite amount ≥ 0, not {value!r}")
    return amount


def _scope(scope: Mapping[str, Any] | None) -> dict[str, str]:
    if not scope:
        return {}
    cleaned = {}
    for key, value in scope.items():
        if not isinstance(key, str) or not key or value is None or isinstance(value, dict):
            raise BudgetError(f"scope {key!r}={value!r}: keys and values are text")
        cleaned[key] = value if isinstance(value, str) else str(value)
    return cleaned


def _zone(tz: str | None) -> tzinfo:
    if not tz or tz.upper() == "UTC":
        return timezone.utc
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise BudgetError(f"tz {tz!r} is not a known IANA time zone (e.g. Europe/Paris)") from None


# --- the start-of-call check ----------------------------------------------------------


def configured() -> tuple[Budget, ...]:
    """The budgets in config.toml (`[[budget]]` tables), which apply to every call."""
    return config.load_settings().budgets


def applicable(
    own: Iterable[Budget],
    sessions: Iterable[UsageSession] = (),
    settings: config.Settings | None = None,
) -> tuple[Budget, ...]:
    """A handler's budgets, its `track_usage()` sessions', then config.toml's (from
    `settings` when just read), once each."""
    found: dict[int, Budget] = {}
    for budget in own:
        found.setdefault(id(budget), budget)
    for session in sessions:
        for budget in session.budgets:
            found.setdefault(id(budget), budget)
    for budget in (settings or config.load_settings()).budgets:
        found.setdefault(id(budget), budget)
    return tuple(found.values())


class _Estimate:
    """This call's estimated spend, worked out at most once per call."""

    def __init__(self, estimate: Callable[[], Spend | None] | None) -> None:
        self._estimate = estimate
        self._done = False
        self._value: Spend | None = None

    def get(self) -> Spend | None:
        if not self._done:
            self._done = True
            self._value = self._estimate() if self._estimate is not None else None
        return self._value


def check(
    own: Iterable[Budget],
    facts: Callable[[], CallFacts],
    *,
    db: Path | str | None = None,
    sessions: Sequence[UsageSession] = (),
    estimate: Callable[[], Spend | None] | None = None,
) -> None:
    """The start-of-call check, before the request is sent.

    Checks the budgets that apply (`own`, the `sessions`', config.toml's) and match the
    call (`facts()`, worked out only when some budget applies). Raises
    `BudgetExceededError` for a reached `block` budget (and a `throttle` one that waited
    its `max_wait`); queues the alerts any budget's thresholds call for. Anything else
    that goes wrong is logged once and the call goes ahead. `estimate` gives this
    call's estimated spend (see `estimate_call`), for `include_estimate` budgets.
    """
    try:
        settings = config.load_settings()
        chosen = applicable(own, sessions, settings)
        if not chosen:
            return
        call = facts()
        chosen = tuple(b for b in chosen if b.matches(call))
        if not chosen:
            return
        path = log_path(db, sessions, settings)
        log = LogRead(path, settings)
        guess = _Estimate(estimate)
        for budget in chosen:
            _check_one(budget, path, log, guess)
    except BudgetExceededError:
        raise
    except Exception as exc:
        config.warn_once(
            f"budget-check:{type(exc).__name__}",
            f"a budget check failed and was skipped ({type(exc).__name__}: {exc}); "
            "the call goes ahead",
        )


def _check_one(budget: Budget, path: str, log: LogRead, guess: _Estimate) -> None:
    meter = budget._meter(path)
    now = budget.clock.now()
    spent, window = meter.view(now, log)
    _alert(budget, meter, spent, window, now, log)
    if budget.action == "warn":
        return
    extra = guess.get() if budget.include_estimate else None
    if not budget._over(spent, extra):
        return
    waited = 0.0
    if budget.action == "throttle":
        while waited < budget.max_wait:
            step = min(THROTTLE_POLL, budget.max_wait - waited)
            budget.clock.sleep(step)
            waited += step
            now = budget.clock.now()
            spent, window = meter.view(now, LogRead(path), fresh=True)
            if not budget._over(spent, extra):
                return
    raise budget._exceeded(spent, window, now, extra, waited)


def estimate_call(model: str | None, messages: Any, max_output_tokens: int | None) -> Spend | None:
    """A call's estimated spend for `include_estimate`: the prompt counted by
    `count_tokens`, plus `max_output_tokens` of output (the model's output limit when
    the call sets none), each at the model's price. None when it cannot be estimated."""
    if not model or messages is None:
        return None
    from modelforge.tokens import estimate_cost

    try:
        guess = estimate_cost(model, messages, max_output_tokens)
    except (ModelForgeError, TypeError, ValueError) as exc:
        config.warn_once(
            f"budget-estimate:{model}", f"cannot estimate a {model} call for budgets: {exc}"
        )
        return None
    cost = guess.max_cost if guess.max_cost is not None else guess.input_cost
    if cost is None:
        config.warn_once(
            f"budget-estimate:{model}",
            f"no price for {model}: include_estimate budgets count only its tokens",
        )
    return Spend(guess.input_tokens + (guess.max_output_tokens or 0), in_pico(cost))


# --- alerts -------------------------------------------------------------------------------


def _alert(
    budget: Budget,
    meter: Meter,
    spent: Spend,
    window: Window,
    now: datetime,
    log: LogRead | None,
    *,
    shared: bool | None = None,
) -> None:
    """Queue an alert for each threshold crossed this period and not yet fired here.

    It is claimed in the log (so it fires once across processes) when `shared`, which
    defaults to whether `log` is given: recording is on."""
    if not budget._marks:
        return
    # A rolling budget's alerts still fire once per calendar period.
    period = budget.window(now) if budget.rate else window
    key = period.since or ""
    # Read without the lock: `claim` decides, under it.
    fired = meter.fired if meter.fired_period == key else ()
    due = [m for m in budget._marks if m.key not in fired and (m.hourly or m.reached(spent))]
    if not due:
        return
    hourly: Spend | None = None
    if any(m.hourly for m in due):
        hourly, _ = budget._hourly_meter(meter.path).view(now, log)
        due = [m for m in due if not m.hourly or m.reached(hourly)]
    if shared is None:
        shared = log is not None and log.recording()
    fire = set(meter.claim(key, [m.key for m in due]))
    for mark in (m for m in due if m.key in fire):
        alert = BudgetAlert(
            budget=budget.name,
            threshold=mark.key,
            action=budget.action,
            period=budget.period,
            period_start=period.start,
            resets_at=period.end,
            spent_usd=spent.usd,
            spent_tokens=spent.tokens,
            limit_usd=budget.usd,
            limit_tokens=budget.tokens,
            scope=budget.scope,
            hourly_usd=hourly.usd if hourly is not None and mark.hourly else None,
            hourly_tokens=hourly.tokens if hourly is not None and mark.hourly else None,
        )
        claim = meter.path if shared else None
        queue_alert(alert, log=claim, on_alert=budget.on_alert, webhook=budget.webhook)


# --- the end of a call ----------------------------------------------------------------


def note(
    record: CallRecord,
    *,
    db: Path | str | None,
    persisted: bool,
    budgets: Sequence[Budget] = (),
    settings: config.Settings | None = None,
) -> None:
    """Count a finished call in this process's meters of its log (before the log has it,
    or instead of it when it is not `persisted`), and queue the alerts it calls for.

    `budgets` (its sessions' and config.toml's) get meters here if no check made them,
    so their alerts fire for calls no handler checked (LlamaIndex's instrumentation).
    `settings` is the config file as just read.
    """
    if not budgets and not any_meters():
        return  # no budget has been used in this process
    try:
        path = log_path(db, (), settings)
        for budget in budgets:
            budget._meter(path)
        meters = meters_of(path)
        if not meters:
            return
        call = CallFacts.of_record(record)
        usage = record.usage
        spend = Spend(usage.input_tokens + usage.output_tokens, in_pico(record.cost.total))
        entry = Entry(record.ts, record.run_id, spend, False)
        recording = config.telemetry_status(settings).enabled
        matched = [(m, list(m.budgets)) for m in meters if _matches(m.spec.scope, call)]
        for meter, users in matched:  # every meter first, hourly-rate ones included
            meter.add((users[0].clock if users else SYSTEM_CLOCK).now(), entry, persisted)
        for meter, users in matched:
            for budget in users:
                now = budget.clock.now()
                spent, window = meter.view(now, None)
                _alert(budget, meter, spent, window, now, None, shared=recording)
    except Exception as exc:
        config.warn_once(
            f"budget-note:{type(exc).__name__}",
            f"a call could not be counted for budgets ({type(exc).__name__}: {exc})",
        )


# --- status, and budgets in config.toml ---------------------------------------------------


@dataclass(frozen=True)
class BudgetStatus:
    """Where a budget stands: spend this period against its limits, when the period
    resets, and a straight-line projection of the spend to the period's end."""

    budget: Budget
    period_start: datetime | None
    resets_at: datetime | None
    spent_usd: Decimal
    spent_tokens: int
    used_percent: Decimal
    projected_usd: Decimal | None
    projected_tokens: int | None

    def as_json(self) -> dict[str, Any]:
        def when(moment: datetime | None) -> str | None:
            return format_ts(moment) if moment else None

        budget = self.budget
        return {
            "name": budget.name,
            "period": budget.period,
            "rolling": budget.rate,
            "action": budget.action,
            "scope": dict(budget.scope),
            "limit_usd": money_text(budget.usd),
            "limit_tokens": budget.tokens,
            "spent_usd": money_text(self.spent_usd),
            "spent_tokens": self.spent_tokens,
            "used_percent": str(self.used_percent),
            "period_start": when(self.period_start),
            "resets_at": when(self.resets_at),
            "projected_usd": money_text(self.projected_usd),
            "projected_tokens": self.projected_tokens,
        }


def status(
    conn: sqlite3.Connection | None, budgets: Iterable[Budget], now: datetime | None = None
) -> list[BudgetStatus]:
    """Each budget's standing in the log `conn` (None: no log yet, nothing spent)."""
    result = []
    for budget in budgets:
        moment = now or budget.clock.now()
        window = budget.window(moment)
        spent = NOTHING
        if conn is not None:
            spent = logged_spend(conn, budget._spec, window.since)
        shares = []
        if budget.usd is not None:
            shares.append(_percent(Decimal(spent.pico), Decimal(in_pico(budget.usd))))
        if budget.tokens is not None:
            shares.append(_percent(Decimal(spent.tokens), Decimal(budget.tokens)))
        projected_usd = projected_tokens = None
        if window.start is not None and window.end is not None and moment > window.start:
            factor = Decimal((window.end - window.start) / (moment - window.start))
            projected_usd = (spent.usd * factor).quantize(Decimal("0.000001"))
            projected_tokens = int(spent.tokens * factor)
        resets = window.end
        if budget.rate:
            resets = moment + timedelta(seconds=SECONDS[budget.period])
        result.append(
            BudgetStatus(
                budget,
                window.start,
                resets,
                spent.usd,
                spent.tokens,
                max(shares),
                projected_usd,
                projected_tokens,
            )
        )
    return result


def _percent(part: Decimal, whole: Decimal) -> Decimal:
    if not whole:
        return Decimal(100) if part else Decimal(0)
    return (part * 100 / whole).quantize(Decimal("0.1"))


def save_budget(budget: Budget) -> Path:
    """Add `budget` to config.toml, replacing one of the same name; returns the file."""
    tables = [t for t in config.saved_budget_tables() if t.get("name") != budget.name]
    tables.append(budget.as_table())
    return config.save_budget_tables(tables)


def remove_budget(name: str) -> Path:
    """Remove the budget called `name` from config.toml; BudgetError if there is none."""
    tables = config.saved_budget_tables()
    kept = [t for t in tables if t.get("name") != name]
    if len(kept) == len(tables):
        raise BudgetError(f"no budget named {name!r} in {config.config_path()}")
    return config.save_budget_tables(kept)
