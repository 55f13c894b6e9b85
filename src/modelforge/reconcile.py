"""Reconcile the log's computed costs with what OpenAI and Anthropic billed.

The flow, top to bottom:

1. `AdminClient` fetches the provider's cost and usage reports (daily buckets), every
   page, retrying 429 and 5xx answers within a bounded time. Any failure raises
   `ReconcileError`: partial data is never shown or stored.
2. The parsers turn each provider's documented shape into `BilledFigure`s. Amounts are
   read from the raw JSON text straight into `Decimal`; Anthropic's are in cents.
3. `store_billed` replaces the fetched days' rows of the log's `billed` table.
4. `logged_figures` sums the log's calls per UTC day, model and service tier.
5. `compare` pairs both sides through the resolver that prices calls and gives each
   day×model row a verdict; rows that cannot match are explained, not counted.

`reconcile()` runs all five; it is what `modelforge reconcile` calls.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from modelforge import __version__, config
from modelforge.errors import BillingAPIError, ReconcileError, UsageLogError
from modelforge.pricing.resolve import resolve
from modelforge.records import format_ts
from modelforge.report import ReportError, parse_when

JSON = dict[str, Any]

PROVIDERS = ("openai", "anthropic")
PROVIDER_NAMES = {"openai": "OpenAI", "anthropic": "Anthropic"}
KEY_VARIABLES = {"openai": "OPENAI_ADMIN_KEY", "anthropic": "ANTHROPIC_ADMIN_KEY"}
URL_VARIABLES = {
    "openai": "MODELFORGE_OPENAI_ADMIN_URL",
    "anthropic": "MODELFORGE_ANTHROPIC_ADMIN_URL",
}
DEFAULT_URLS = {"openai": "https://api.openai.com", "anthropic": "https://api.anthropic.com"}
ANTHROPIC_VERSION = "2023-06-01"

OPENAI_COSTS = "/v1/organization/costs"
OPENAI_USAGE = "/v1/organization/usage/completions"
ANTHROPIC_COSTS = "/v1/organizations/cost_report"
ANTHROPIC_USAGE = "/v1/organizations/usage_report/messages"

# Anthropic documents data "typically within 5 minutes, occasionally longer"; OpenAI
# gives no figure. A day counts as settled only this long after it ends.
REPORTING_DELAY = {"openai": timedelta(hours=24), "anthropic": timedelta(hours=1)}
TOLERANCE = Decimal("0.01")
VIEWS = ("day", "model")
TOKEN_CLASSES = ("input", "cache_read", "cache_write", "output", "other")
COMPARED = ("match", "differs")

# Daily buckets per page: the most every endpoint here accepts.
PAGE_DAYS = 31
MAX_PAGES = 1000
MAX_RETRIES = 6
RETRY_BUDGET = 120.0
BACKOFF_BASE = 1.0
BACKOFF_MAX = 30.0
TIMEOUT = 60.0

_STANDARD_TIERS = frozenset({"", "standard", "default", "auto", "on_demand", "on-demand"})
_TIER_ALIASES = {"priority_on_demand": "priority", "flex_discount": "flex"}
_OPENAI_TIERS = frozenset({"batch", "priority", "flex", "scale"})
_OPENAI_CLASSES = {
    "input": "input",
    "cached input": "cache_read",
    "cache writes": "cache_write",
    "cache write": "cache_write",
    "output": "output",
}
_ANTHROPIC_CLASSES = {
    "uncached_input_tokens": "input",
    "cache_read_input_tokens": "cache_read",
    "cache_creation.ephemeral_5m_input_tokens": "cache_write",
    "cache_creation.ephemeral_1h_input_tokens": "cache_write",
    "output_tokens": "output",
}
# Anything shaped like an API key, in case a server quotes back a key other than ours.
_KEYLIKE = re.compile(r"sk-[A-Za-z0-9_\-*.]{6,}")


# --- the billing side -----------------------------------------------------------------


@dataclass(frozen=True)
class BilledFigure:
    """One figure from a billing API: a cost in USD or a token count, for one UTC day."""

    provider: str
    day: str
    model: str  # the billing API's own name; "" for charges that are not a model's tokens
    line_item: str
    token_class: str
    service_tier: str
    amount_usd: Decimal | None
    tokens: int | None
    source: str


@dataclass(frozen=True)
class Billing:
    """Everything one fetch returned for the UTC days `first_day` up to `end_day`."""

    provider: str
    first_day: date
    end_day: date  # exclusive
    figures: tuple[BilledFigure, ...]
    fetched_at: str


def admin_key(provider: str, environ: Mapping[str, str] | None = None) -> str:
    """The admin key from the provider's variable; a clear error naming it when unset."""
    environ = os.environ if environ is None else environ
    variable = KEY_VARIABLES[provider]
    key = environ.get(variable, "").strip()
    if not key:
        raise ReconcileError(
            f"{variable} is not set: reconcile reads {PROVIDER_NAMES[provider]}'s billing "
            f"with an Admin API key (not a regular API key); export {variable}=…"
        )
    # urllib would quote a header value it refuses, key and all, in its error.
    if not (key.isascii() and key.isprintable()) or any(c.isspace() for c in key):
        raise ReconcileError(f"{variable} contains spaces or control characters")
    return key


def admin_url(
    provider: str, base_url: str | None = None, environ: Mapping[str, str] | None = None
) -> str:
    """`base_url`, else the provider's MODELFORGE_*_ADMIN_URL, else the provider's API."""
    environ = os.environ if environ is None else environ
    url = base_url or environ.get(URL_VARIABLES[provider]) or DEFAULT_URLS[provider]
    url = url.rstrip("/")
    # The endpoint paths carry /v1, so a base URL given with it (as SDKs take) is fine too.
    return url.removesuffix("/v1")


class AdminClient:
    """GETs every page of one provider's Admin API reports, retrying 429 and 5xx.

    The key lives only in this object's memory: it is never logged, stored, or put in
    an error message (text a server sends back is redacted before it is shown).
    Retries wait as `Retry-After` asks, else back off exponentially; all waits together
    stay within `budget` seconds.
    """

    def __init__(
        self,
        provider: str,
        key: str,
        base_url: str,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        budget: float = RETRY_BUDGET,
        timeout: float = TIMEOUT,
    ) -> None:
        self.provider = provider
        self.base_url = base_url
        self._key = key
        self._sleep = sleep
        self._clock = clock
        self._budget = budget
        self._deadline = clock() + budget
        self._timeout = timeout
        self._opener = urllib.request.build_opener()

    def __repr__(self) -> str:
        return f"AdminClient({self.provider!r}, {self.base_url!r})"

    def pages(self, path: str, query: list[tuple[str, str]]) -> Iterator[JSON]:
        """Every page of `path`, following `next_page` while `has_more` says so."""
        token: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            body = self.get(path, query + ([("page", token)] if token else []))
            more = body.get("has_more")
            if not isinstance(more, bool):
                raise self._incomplete(path, "a page without `has_more`")
            yield body
            if not more:
                return
            token = body.get("next_page")
            if not isinstance(token, str) or not token or token in seen:
                raise self._incomplete(path, "`has_more` without a new `next_page`")
            seen.add(token)
        raise self._incomplete(path, f"more than {MAX_PAGES} pages")

    def get(self, path: str, query: list[tuple[str, str]]) -> JSON:
        """One GET, retried on 429 and 5xx within the budget; the parsed JSON object."""
        url = f"{self.base_url}{path}?{urlencode(query)}"
        attempts = 0
        while True:
            attempts += 1
            try:
                return self._get_once(url, path)
            except _Retry as retry:
                wait = retry.after
                if wait is None:
                    wait = min(BACKOFF_BASE * 2 ** (attempts - 1), BACKOFF_MAX)
                if attempts > MAX_RETRIES or self._clock() + wait > self._deadline:
                    raise BillingAPIError(
                        f"{self._label(path)} still answered {retry.status} after "
                        f"{attempts} attempt(s) (retries are bounded to {self._budget:g} s); "
                        "nothing was stored, try again later",
                        retry.status,
                    ) from None
                self._sleep(wait)

    def _get_once(self, url: str, path: str) -> JSON:
        request = urllib.request.Request(url, headers=self._headers(), method="GET")
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            status = exc.code
            detail = self._redact(_error_text(exc))
            if status == 429 or status >= 500:
                raise _Retry(status, _retry_after(exc.headers.get("retry-after"))) from None
            hint = ""
            if status in (401, 403):
                hint = f"; check {KEY_VARIABLES[self.provider]} holds an Admin API key"
            raise BillingAPIError(
                f"{self._label(path)} answered {status}: {detail}{hint}", status
            ) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise ReconcileError(
                f"cannot reach {self.base_url}: {self._redact(str(reason))}"
            ) from None
        return self._parse(raw, path)

    def _parse(self, raw: bytes, path: str) -> JSON:
        try:
            # Numbers go straight from their text to Decimal: never through float.
            body = json.loads(raw.decode("utf-8"), parse_float=Decimal, parse_constant=_reject)
        except (UnicodeDecodeError, ValueError):
            raise ReconcileError(f"{self._label(path)} did not answer JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise ReconcileError(f"{self._label(path)} answered an unexpected shape (no data list)")
        return body

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": f"model-forge/{__version__}"}
        if self.provider == "anthropic":
            headers |= {"x-api-key": self._key, "anthropic-version": ANTHROPIC_VERSION}
        else:
            headers["Authorization"] = f"Bearer {self._key}"
        return headers

    def _redact(self, text: str) -> str:
        return _KEYLIKE.sub("[redacted]", text.replace(self._key, "[redacted]"))

    def _label(self, path: str) -> str:
        return f"{PROVIDER_NAMES[self.provider]} {path}"

    def _incomplete(self, path: str, what: str) -> ReconcileError:
        return ReconcileError(
            f"{self._label(path)} returned {what}: the data may be incomplete, so nothing "
            "was stored or compared"
        )


class _Retry(Exception):
    def __init__(self, status: int, after: float | None) -> None:
        self.status = status
        self.after = after


def _reject(constant: str) -> Any:
    raise ValueError(f"non-finite number {constant}")


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a `Retry-After` header: a number or an HTTP date."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return max((moment - datetime.now(timezone.utc)).total_seconds(), 0.0)


def _error_text(exc: urllib.error.HTTPError) -> str:
    """The message of a provider's JSON error body, else the HTTP reason, shortened."""
    try:
        body = json.loads(exc.read().decode("utf-8", "replace"))
        message = body["error"]["message"]
    except (ValueError, KeyError, TypeError, OSError):
        message = exc.reason
    return str(message)[:300]


# --- parsing the providers' shapes ----------------------------------------------------


def _decimal(value: Any, what: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (Decimal, int, str)):
        raise ReconcileError(f"billing {what} is not a number: {value!r}")
    try:
        amount = Decimal(value) if not isinstance(value, str) else Decimal(value.strip())
    except ArithmeticError:
        raise ReconcileError(f"billing {what} is not a number: {value!r}") from None
    if not amount.is_finite():
        raise ReconcileError(f"billing {what} is not a finite number: {value!r}")
    return amount


def _count(value: Any, what: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ReconcileError(f"billing {what} is not a token count: {value!r}")
    return value


def _tier(value: Any) -> str:
    text = str(value or "").strip().lower()
    return "standard" if text in _STANDARD_TIERS else _TIER_ALIASES.get(text, text)


def _day_of(moment: datetime, what: str) -> str:
    """The UTC day a daily bucket covers; a bucket not starting at midnight UTC is refused."""
    moment = moment.astimezone(timezone.utc)
    if moment.time() != datetime.min.time():
        raise ReconcileError(f"billing bucket {what} does not start at midnight UTC")
    return moment.date().isoformat()


def _buckets(page: JSON) -> Iterator[JSON]:
    for bucket in page["data"]:
        if not isinstance(bucket, dict) or not isinstance(bucket.get("results"), list):
            raise ReconcileError("billing bucket without a results list")
        yield bucket


def _openai_day(bucket: JSON) -> str:
    start = bucket.get("start_time")
    if isinstance(start, bool) or not isinstance(start, int):
        raise ReconcileError(f"OpenAI bucket start_time is not a Unix time: {start!r}")
    return _day_of(datetime.fromtimestamp(start, timezone.utc), str(start))


def _anthropic_day(bucket: JSON) -> str:
    start = bucket.get("starting_at")
    try:
        moment = datetime.fromisoformat(str(start).replace("Z", "+00:00"))
    except ValueError:
        raise ReconcileError(f"Anthropic bucket starting_at is not a time: {start!r}") from None
    return _day_of(moment, str(start))


def parse_openai_line_item(line_item: str) -> tuple[str, str, str]:
    """`(model, token class, tier)` of an OpenAI costs line item.

    >>> parse_openai_line_item("gpt-4o-2024-08-06, cached input")
    ('gpt-4o-2024-08-06', 'cache_read', 'standard')
    >>> parse_openai_line_item("priority | gpt-5-2025-08-07, output, long context")
    ('gpt-5-2025-08-07', 'output', 'priority')
    >>> parse_openai_line_item("web search tool calls")
    ('', 'other', 'standard')
    """
    tier = "standard"
    head, bar, rest = line_item.partition(" | ")
    if bar and head.strip().lower() in _OPENAI_TIERS:
        tier, line_item = head.strip().lower(), rest
    name, comma, tail = line_item.partition(", ")
    if not comma or not name.strip():
        return "", "other", tier  # tools, storage and the like: no model's tokens
    pieces = [piece.strip().lower() for piece in tail.split(",")]
    tier = next((p for p in pieces[1:] if p in _OPENAI_TIERS), tier)
    model, *modality = name.split()
    token_class = _OPENAI_CLASSES.get(pieces[0], "other")
    if modality and modality[0] in ("audio", "image"):
        token_class = "other"  # priced apart from text tokens
    return model, token_class, tier


def _openai_cost(day: str, result: JSON) -> BilledFigure:
    amount = result.get("amount")
    if not isinstance(amount, dict):
        raise ReconcileError("OpenAI cost result without an amount")
    currency = str(amount.get("currency") or "").lower()
    if currency != "usd":
        raise ReconcileError(f"OpenAI cost in {currency or 'no currency'}, not USD")
    line_item = str(result.get("line_item") or "")
    model, token_class, tier = parse_openai_line_item(line_item)
    value = _decimal(amount.get("value"), "amount.value")
    return BilledFigure(
        "openai", day, model, line_item, token_class, tier, value, None, OPENAI_COSTS
    )


def _token_figures(
    provider: str, day: str, model: str, tier: str, counts: Mapping[str, int], source: str
) -> Iterator[BilledFigure]:
    suffix = "" if tier == "standard" else f" ({tier})"
    for token_class, tokens in counts.items():
        if tokens:
            line_item = f"tokens: {token_class}{suffix}"
            yield BilledFigure(
                provider, day, model, line_item, token_class, tier, None, tokens, source
            )


def _openai_usage(day: str, result: JSON) -> Iterator[BilledFigure]:
    model = str(result.get("model") or "")
    tier = "batch" if result.get("batch") is True else _tier(result.get("service_tier"))
    inputs = _count(result.get("input_tokens"), "input_tokens")
    cached = _count(result.get("input_cached_tokens"), "input_cached_tokens")
    counts = {
        "input": inputs - cached,  # input_tokens includes the cached ones
        "cache_read": cached,
        "output": _count(result.get("output_tokens"), "output_tokens"),
    }
    return _token_figures("openai", day, model, tier, counts, OPENAI_USAGE)


def _anthropic_cost(day: str, result: JSON) -> BilledFigure:
    currency = str(result.get("currency") or "").upper()
    if currency != "USD":
        raise ReconcileError(f"Anthropic cost in {currency or 'no currency'}, not USD")
    # Amounts are decimal strings in cents: "123.45" is $1.2345. scaleb is exact.
    amount = _decimal(result.get("amount"), "amount").scaleb(-2)
    model = str(result.get("model") or "")
    description = str(result.get("description") or result.get("cost_type") or "")
    token_class = _ANTHROPIC_CLASSES.get(str(result.get("token_type") or ""), "other")
    tier = _tier(result.get("service_tier"))
    return BilledFigure(
        "anthropic", day, model, description, token_class, tier, amount, None, ANTHROPIC_COSTS
    )


def _anthropic_usage(day: str, result: JSON) -> Iterator[BilledFigure]:
    model = str(result.get("model") or "")
    creation = result.get("cache_creation") or {}
    if not isinstance(creation, dict):
        raise ReconcileError("Anthropic usage cache_creation is not an object")
    counts = {
        "input": _count(result.get("uncached_input_tokens"), "uncached_input_tokens"),
        "cache_read": _count(result.get("cache_read_input_tokens"), "cache_read_input_tokens"),
        "cache_write": _count(creation.get("ephemeral_5m_input_tokens"), "cache_creation")
        + _count(creation.get("ephemeral_1h_input_tokens"), "cache_creation"),
        "output": _count(result.get("output_tokens"), "output_tokens"),
    }
    tier = _tier(result.get("service_tier"))
    return _token_figures("anthropic", day, model, tier, counts, ANTHROPIC_USAGE)


def _results(pages: Iterable[JSON], day_of: Callable[[JSON], str]) -> Iterator[tuple[str, JSON]]:
    for page in pages:
        for bucket in _buckets(page):
            day = day_of(bucket)
            for result in bucket["results"]:
                if not isinstance(result, dict):
                    raise ReconcileError("billing result is not an object")
                yield day, result


def _fetch_openai(client: AdminClient, first: date, end: date) -> Iterator[BilledFigure]:
    window = [
        ("start_time", str(_midnight_unix(first))),
        ("end_time", str(_midnight_unix(end))),
        ("bucket_width", "1d"),
        ("limit", str(PAGE_DAYS)),
    ]
    costs = client.pages(OPENAI_COSTS, [*window, ("group_by", "line_item")])
    for day, result in _results(costs, _openai_day):
        yield _openai_cost(day, result)
    usage = client.pages(OPENAI_USAGE, [*window, ("group_by", "model"), ("group_by", "batch")])
    for day, result in _results(usage, _openai_day):
        yield from _openai_usage(day, result)


def _fetch_anthropic(client: AdminClient, first: date, end: date) -> Iterator[BilledFigure]:
    window = [
        ("starting_at", f"{first.isoformat()}T00:00:00Z"),
        ("ending_at", f"{end.isoformat()}T00:00:00Z"),
        ("bucket_width", "1d"),
        ("limit", str(PAGE_DAYS)),
    ]
    costs = client.pages(ANTHROPIC_COSTS, [*window, ("group_by[]", "description")])
    for day, result in _results(costs, _anthropic_day):
        yield _anthropic_cost(day, result)
    usage = client.pages(
        ANTHROPIC_USAGE, [*window, ("group_by[]", "model"), ("group_by[]", "service_tier")]
    )
    for day, result in _results(usage, _anthropic_day):
        yield from _anthropic_usage(day, result)


def _midnight_unix(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp())


def fetch_billing(client: AdminClient, first: date, end: date) -> Billing:
    """Every billed figure for the UTC days `first` up to (not including) `end`."""
    fetch = _fetch_openai if client.provider == "openai" else _fetch_anthropic
    fetched_at = format_ts(datetime.now(timezone.utc))
    figures = [f for f in fetch(client, first, end) if first.isoformat() <= f.day < end.isoformat()]
    return Billing(client.provider, first, end, tuple(_merge(figures)), fetched_at)


def _merge(figures: Iterable[BilledFigure]) -> list[BilledFigure]:
    """One figure per (day, model, line item): repeats (other workspaces…) are summed."""
    merged: dict[tuple[str, str, str], BilledFigure] = {}
    for figure in figures:
        key = (figure.day, figure.model, figure.line_item)
        seen = merged.get(key)
        if seen is None:
            merged[key] = figure
            continue
        amount = seen.amount_usd
        if figure.amount_usd is not None:
            amount = figure.amount_usd + (amount or 0)
        tokens = seen.tokens
        if figure.tokens is not None:
            tokens = figure.tokens + (tokens or 0)
        merged[key] = BilledFigure(
            seen.provider,
            seen.day,
            seen.model,
            seen.line_item,
            seen.token_class,
            seen.service_tier,
            amount,
            tokens,
            seen.source,
        )
    return list(merged.values())


# --- the log side ---------------------------------------------------------------------


def store_billed(conn: sqlite3.Connection, billing: Billing) -> int:
    """Replace the `billed` rows of the fetched days with this fetch; returns rows written."""
    rows = [
        {
            "provider": f.provider,
            "day": f.day,
            "model": f.model,
            "line_item": f.line_item,
            "token_class": f.token_class,
            "service_tier": f.service_tier,
            "amount_usd": None if f.amount_usd is None else format(f.amount_usd, "f"),
            "tokens": f.tokens,
            "source": f.source,
            "fetched_at": billing.fetched_at,
        }
        for f in billing.figures
    ]
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "DELETE FROM billed WHERE provider = ? AND day >= ? AND day < ?",
            [billing.provider, billing.first_day.isoformat(), billing.end_day.isoformat()],
        )
        conn.executemany(
            "INSERT INTO billed (provider, day, model, line_item, token_class, service_tier, "
            "amount_usd, tokens, source, fetched_at) VALUES (:provider, :day, :model, "
            ":line_item, :token_class, :service_tier, :amount_usd, :tokens, :source, "
            ":fetched_at)",
            rows,
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return len(rows)


@dataclass
class Side:
    """One side's sums for a row: USD per token class and tokens per token class."""

    usd: dict[str, Decimal] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)

    def add_usd(self, token_class: str, amount: Decimal) -> None:
        self.usd[token_class] = self.usd.get(token_class, Decimal(0)) + amount

    def add_tokens(self, token_class: str, count: int) -> None:
        self.tokens[token_class] = self.tokens.get(token_class, 0) + count

    def merge(self, other: Side) -> None:
        for token_class, amount in other.usd.items():
            self.add_usd(token_class, amount)
        for token_class, count in other.tokens.items():
            self.add_tokens(token_class, count)

    @property
    def total(self) -> Decimal | None:
        return sum(self.usd.values(), Decimal(0)) if self.usd else None


@dataclass
class Logged:
    """The log's calls for one UTC day, model (catalog key) and service tier."""

    calls: int = 0
    unpriced_calls: int = 0
    cost: Decimal = Decimal(0)
    side: Side = field(default_factory=Side)
    names: set[str] = field(default_factory=set)


_LOGGED_SQL = """
SELECT substr(ts, 1, 10), coalesce(response_model, model), catalog_model, service_tier,
       priced, cost_usd, cost_input, cost_cache_read, cost_cache_write, cost_output,
       cost_reasoning, cost_audio, input_tokens, cache_read_tokens,
       cache_write_tokens + cache_write_1h_tokens, output_tokens
FROM calls
WHERE ts >= ? AND ts < ? AND (provider = ? OR (provider IS NULL AND catalog_model LIKE ?))
"""


def logged_figures(
    conn: sqlite3.Connection, provider: str, first: date, end: date
) -> dict[tuple[str, str, str], Logged]:
    """The log's calls to `provider` on the UTC days `first` up to `end`, summed.

    A call belongs to the UTC day of its timestamp (23:59:59.9 is still that day). Its
    model is the catalog entry that priced it, else what the resolver makes of the
    served (else requested) model name: the same key billing names are matched by.
    """
    found: dict[tuple[str, str, str], Logged] = {}
    params = [f"{first.isoformat()}T", f"{end.isoformat()}T", provider, f"{provider}/%"]
    for row in conn.execute(_LOGGED_SQL, params):
        day, name, catalog_model, tier, priced = row[:5]
        cost, c_in, c_read, c_write, c_out, c_reason, c_audio = row[5:12]
        t_in, t_read, t_write, t_out = (int(v or 0) for v in row[12:16])
        key = (day, catalog_model or match_key(name or "", provider), _tier(tier))
        logged = found.setdefault(key, Logged())
        logged.calls += 1
        logged.names.add(name or "")
        if not priced or cost is None:
            logged.unpriced_calls += 1
            continue
        logged.cost += Decimal(cost)
        side = logged.side
        side.add_usd("input", _dec(c_in))
        side.add_usd("cache_read", _dec(c_read))
        side.add_usd("cache_write", _dec(c_write))
        side.add_usd("output", _dec(c_out) + _dec(c_reason))  # reasoning is billed as output
        if c_audio:
            side.add_usd("other", _dec(c_audio))
        side.add_tokens("input", t_in - t_read - t_write)  # inclusive counts: take parts out
        side.add_tokens("cache_read", t_read)
        side.add_tokens("cache_write", t_write)
        side.add_tokens("output", t_out)
    return found


def _dec(text: str | None) -> Decimal:
    return Decimal(text) if text else Decimal(0)


def match_key(name: str, provider: str) -> str:
    """The key a billing or logged model name is matched by: the catalog entry's
    `provider/model_id` as the pricing resolver finds it, else `provider/name`."""
    if not name:
        return ""
    entry = resolve(name, provider)
    return entry.key if entry is not None else f"{provider}/{name}"


# --- the comparison -------------------------------------------------------------------


@dataclass
class Row:
    """Billed against logged for one UTC day (None in the by-model view), model, tier."""

    day: str | None
    model: str
    service_tier: str
    billed: Side = field(default_factory=Side)
    logged: Side = field(default_factory=Side)
    logged_usd: Decimal | None = None
    calls: int = 0
    unpriced_calls: int = 0
    billing_names: set[str] = field(default_factory=set)
    logged_names: set[str] = field(default_factory=set)
    verdict: str = ""
    reason: str = ""

    @property
    def billed_usd(self) -> Decimal | None:
        return self.billed.total

    @property
    def diff_usd(self) -> Decimal | None:
        """Logged minus billed: positive when the log computed more than was billed."""
        if self.billed_usd is None or self.logged_usd is None:
            return None
        return self.logged_usd - self.billed_usd

    @property
    def diff_pct(self) -> Decimal | None:
        diff, billed = self.diff_usd, self.billed_usd
        if diff is None or not billed:
            return None
        return diff / billed * 100

    def add(self, other: Row) -> None:
        self.billed.merge(other.billed)
        self.logged.merge(other.logged)
        if other.logged_usd is not None:
            self.logged_usd = other.logged_usd + (self.logged_usd or 0)
        self.calls += other.calls
        self.unpriced_calls += other.unpriced_calls
        self.billing_names |= other.billing_names
        self.logged_names |= other.logged_names

    def as_json(self) -> JSON:
        classes = sorted(set(self.billed.usd) | set(self.logged.usd), key=TOKEN_CLASSES.index)
        return {
            "day": self.day,
            "model": self.model or None,
            "service_tier": self.service_tier,
            "billed_usd": _text(self.billed_usd),
            "logged_usd": _text(self.logged_usd),
            "diff_usd": _text(self.diff_usd),
            "diff_pct": _text(None if self.diff_pct is None else round(self.diff_pct, 4)),
            "verdict": self.verdict,
            "reason": self.reason,
            "calls": self.calls,
            "unpriced_calls": self.unpriced_calls,
            "billing_names": sorted(self.billing_names),
            "logged_names": sorted(self.logged_names),
            "by_token_class": {
                c: {
                    "billed_usd": _text(self.billed.usd.get(c)),
                    "logged_usd": _text(self.logged.usd.get(c)),
                }
                for c in classes
            },
            "tokens": {"billed": dict(self.billed.tokens), "logged": dict(self.logged.tokens)},
        }


def _text(amount: Decimal | None) -> str | None:
    return None if amount is None else usd_text(amount)


def usd_text(amount: Decimal) -> str:
    """Exact plain decimal text, without exponent or trailing zeros."""
    text = format(amount, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def within(billed: Decimal, logged: Decimal) -> bool:
    """Whether the logged cost is within 1% of the billed one."""
    if not billed:
        return not logged
    return abs(logged - billed) <= abs(billed) * TOLERANCE


def settling(provider: str, day: str, now: datetime) -> bool:
    """Whether `day` is still inside the provider's reporting delay at `now`."""
    end = datetime.fromisoformat(day).replace(tzinfo=timezone.utc) + timedelta(days=1)
    return now < end + REPORTING_DELAY[provider]


def _judge(row: Row, provider: str, in_delay: bool) -> tuple[str, str]:
    """The verdict and its reason. Only "match" and "differs" count towards agreement."""
    name = PROVIDER_NAMES[provider]
    if in_delay:
        hours = REPORTING_DELAY[provider] // timedelta(hours=1)
        return "settling", (
            f"inside {name}'s reporting delay (a day counts as settled {hours} h after it "
            "ends): its figures may still change"
        )
    if row.service_tier != "standard":
        return "tier", _tier_reason(row.service_tier, provider)
    if not row.model:
        return "not_logged", "not a model's tokens (tool calls, storage…): never in the log"
    if not row.calls:
        return "not_logged", "billed but never logged: calls not made through a tracked client"
    if row.unpriced_calls:
        return "unpriced", (
            f"{row.unpriced_calls} logged call(s) have no price, so the logged cost is "
            "incomplete (see `modelforge prices show`)"
        )
    if row.billed_usd is None:
        return "not_billed", (
            "logged but not billed: calls made with another organization's key or to a test "
            "server, or not yet reported"
        )
    if within(row.billed_usd, row.logged_usd or Decimal(0)):
        return "match", "within 1%"
    return "differs", "more than 1% apart"


def _tier_reason(tier: str, provider: str) -> str:
    if tier == "batch":
        return (
            "batch tier: Batch API jobs are billed at half price and never pass through a "
            "tracked client"
        )
    if tier == "priority" and provider == "anthropic":
        return "priority tier: Anthropic's cost report leaves Priority Tier costs out"
    return f"{tier} tier: billed at the tier's own rates, compared apart from standard calls"


@dataclass
class Agreement:
    """The headline: how many comparable day×model rows agree within 1%."""

    within: int
    compared: int
    billed_usd: Decimal
    logged_usd: Decimal

    @property
    def logged_pct(self) -> Decimal | None:
        """Logged as a percentage of billed, over the compared rows."""
        return self.logged_usd / self.billed_usd * 100 if self.billed_usd else None

    def line(self) -> str:
        pct = "n/a" if self.logged_pct is None else f"{self.logged_pct:.1f}%"
        return (
            f"agreement: {self.within} of {self.compared} day×model rows within 1%; "
            f"billed ${usd_text(self.billed_usd)}, logged ${usd_text(self.logged_usd)} ({pct})"
        )


@dataclass
class Reconciliation:
    """The comparison for one provider and range of UTC days."""

    provider: str
    first_day: date
    end_day: date
    by: str
    fetched_at: str
    rows: list[Row]
    day_rows: list[Row]
    stored: int

    @property
    def agreement(self) -> Agreement:
        compared = [r for r in self.day_rows if r.verdict in COMPARED]
        return Agreement(
            within=sum(r.verdict == "match" for r in compared),
            compared=len(compared),
            billed_usd=sum((r.billed_usd or Decimal(0) for r in compared), Decimal(0)),
            logged_usd=sum((r.logged_usd or Decimal(0) for r in compared), Decimal(0)),
        )

    def explained(self) -> dict[str, JSON]:
        """Day×model rows left out of the agreement, per verdict: count, amounts, reasons."""
        found: dict[str, JSON] = {}
        for row in self.day_rows:
            if row.verdict in COMPARED:
                continue
            entry = found.setdefault(
                row.verdict,
                {"rows": 0, "billed_usd": Decimal(0), "logged_usd": Decimal(0), "reasons": []},
            )
            entry["rows"] += 1
            entry["billed_usd"] += row.billed_usd or 0
            entry["logged_usd"] += row.logged_usd or 0
            if row.reason not in entry["reasons"]:
                entry["reasons"].append(row.reason)
        return found

    def notes(self) -> list[str]:
        """One line per kind of row left out of the agreement, with what it amounts to."""
        lines = []
        for verdict, entry in self.explained().items():
            lines.append(
                f"{verdict} ({entry['rows']} row(s), billed ${usd_text(entry['billed_usd'])}, "
                f"logged ${usd_text(entry['logged_usd'])}): {'; '.join(entry['reasons'])}"
            )
        return lines

    def as_json(self) -> JSON:
        agreement = self.agreement
        return {
            "schema": "modelforge.reconcile/1",
            "provider": self.provider,
            "since": self.first_day.isoformat(),
            "until": self.end_day.isoformat(),
            "by": self.by,
            "fetched_at": self.fetched_at,
            "stored_figures": self.stored,
            "rows": [row.as_json() for row in self.rows],
            "agreement": {
                "within": agreement.within,
                "compared": agreement.compared,
                "tolerance_pct": "1",
                "billed_usd": usd_text(agreement.billed_usd),
                "logged_usd": usd_text(agreement.logged_usd),
                "logged_pct": _text(
                    None if agreement.logged_pct is None else round(agreement.logged_pct, 4)
                ),
            },
            "not_compared": {
                verdict: {
                    **entry,
                    "billed_usd": usd_text(entry["billed_usd"]),
                    "logged_usd": usd_text(entry["logged_usd"]),
                }
                for verdict, entry in self.explained().items()
            },
        }


def compare(
    billing: Billing,
    logged: Mapping[tuple[str, str, str], Logged],
    *,
    by: str = "day",
    now: datetime | None = None,
    stored: int = 0,
) -> Reconciliation:
    """Pair billed and logged figures per UTC day, model and tier, and judge each row."""
    if by not in VIEWS:
        raise ReportError("--by", f"use one of {', '.join(VIEWS)}, not {by!r}")
    now = now or datetime.now(timezone.utc)
    provider = billing.provider
    rows: dict[tuple[str, str, str], Row] = {}

    def row_for(key: tuple[str, str, str]) -> Row:
        return rows.setdefault(key, Row(key[0], key[1], key[2]))

    for figure in billing.figures:
        row = row_for((figure.day, match_key(figure.model, provider), figure.service_tier))
        if figure.model:
            row.billing_names.add(figure.model)
        elif figure.line_item:
            row.billing_names.add(figure.line_item)
        if figure.amount_usd is not None:
            row.billed.add_usd(figure.token_class, figure.amount_usd)
        if figure.tokens is not None:
            row.billed.add_tokens(figure.token_class, figure.tokens)
    for key, sums in logged.items():
        row = row_for(key)
        row.calls, row.unpriced_calls = sums.calls, sums.unpriced_calls
        row.logged, row.logged_names = sums.side, set(sums.names)
        row.logged_usd = sums.cost if sums.calls > sums.unpriced_calls else None
    day_rows = sorted(rows.values(), key=lambda r: (r.day or "", r.model, r.service_tier))
    for row in day_rows:
        row.verdict, row.reason = _judge(row, provider, settling(provider, str(row.day), now))
    shown = day_rows if by == "day" else _by_model(day_rows, provider)
    return Reconciliation(
        provider, billing.first_day, billing.end_day, by, billing.fetched_at, shown, day_rows,
        stored,
    )  # fmt: skip


def _by_model(day_rows: list[Row], provider: str) -> list[Row]:
    """One row per model and tier over the whole range, from its comparable days, and
    one per kind of explained day; settling days are left out."""
    totals: dict[tuple[str, str, str], Row] = {}
    for row in day_rows:
        if row.verdict == "settling":
            continue
        # A day that cannot match must not tip the comparable days' sum.
        kind = "compared" if row.verdict in COMPARED else row.verdict
        key = (row.model, row.service_tier, kind)
        totals.setdefault(key, Row(None, row.model, row.service_tier)).add(row)
    for total in totals.values():
        total.verdict, total.reason = _judge(total, provider, in_delay=False)
    return [totals[key] for key in sorted(totals)]


# --- the one call ---------------------------------------------------------------------


def day_range(since: str, until: str | None, now: datetime | None = None) -> tuple[date, date]:
    """UTC days from `since`'s day up to `until` (exclusive; a time within a day counts
    that day), or through today."""
    now = now or datetime.now(timezone.utc)
    first = date.fromisoformat(parse_when(since, "--since", now)[:10])
    if until is None:
        end = now.astimezone(timezone.utc).date() + timedelta(days=1)
    else:
        stamp = parse_when(until, "--until", now)
        end = date.fromisoformat(stamp[:10])
        if stamp[10:] != "T00:00:00.000000Z":
            end += timedelta(days=1)
    if end <= first:
        raise ReportError("--until", "must be later than --since")
    return first, end


def reconcile(
    provider: str,
    since: str = "30d",
    until: str | None = None,
    *,
    by: str = "day",
    db: Path | str | None = None,
    base_url: str | None = None,
    environ: Mapping[str, str] | None = None,
    now: datetime | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Reconciliation:
    """Fetch `provider`'s billing for the days, store it in the log, compare with the log.

    Checks everything that needs no network first (provider, dates, key, log file),
    then fetches every page; only a complete fetch is stored and compared.

    Example (against the bundled wire server, as the tests do):
        `reconcile("openai", "7d", environ={"OPENAI_ADMIN_KEY": key,
        "MODELFORGE_OPENAI_ADMIN_URL": server.base_url})`
    """
    if provider not in PROVIDERS:
        raise ReportError("--provider", f"use one of {', '.join(PROVIDERS)}, not {provider!r}")
    if by not in VIEWS:
        raise ReportError("--by", f"use one of {', '.join(VIEWS)}, not {by!r}")
    first, end = day_range(since, until, now)
    key = admin_key(provider, environ)
    client = AdminClient(provider, key, admin_url(provider, base_url, environ), sleep=sleep)
    from modelforge.store import open_db

    path = Path(db) if db is not None else config.default_db_path()
    if not path.exists():
        raise UsageLogError(f"no usage log at {path}: nothing to compare the billing with")
    conn = open_db(path)  # for writing: the billed figures are stored in it
    try:
        billing = fetch_billing(client, first, end)
        stored = store_billed(conn, billing)
        logged = logged_figures(conn, provider, first, end)
    finally:
        conn.close()
    return compare(billing, logged, by=by, now=now, stored=stored)
