"""Errors raised by model-forge. Every one derives from `ModelForgeError`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any


class ModelForgeError(Exception):
    """Base class for every error model-forge raises on purpose."""


class UnknownModelError(ModelForgeError, LookupError):
    """No catalog entry matches the model id."""

    def __init__(self, model: str, provider: str | None, close_matches: Sequence[str]) -> None:
        self.model = model
        self.provider = provider
        self.close_matches = list(close_matches)
        where = f" for provider {provider!r}" if provider else ""
        hint = f"; close matches: {', '.join(self.close_matches)}" if self.close_matches else ""
        super().__init__(f"unknown model {model!r}{where}{hint}")


class PriceTableError(ModelForgeError, ValueError):
    """A price table (bundled, models.dev or override) is malformed."""

    def __init__(
        self, source: str, message: str, *, model: str | None = None, field: str | None = None
    ) -> None:
        self.source = source
        self.model = model
        self.field = field
        parts = [source]
        if model:
            parts.append(f"model {model!r}")
        if field:
            parts.append(f"field {field!r}")
        super().__init__(f"{': '.join(parts)}: {message}")


class ConfigError(ModelForgeError, ValueError):
    """A setting (env var or config file) has a value we cannot use."""

    def __init__(self, setting: str, message: str) -> None:
        self.setting = setting
        super().__init__(f"{setting}: {message}")


class UsageLogError(ModelForgeError):
    """The usage log cannot be opened or read."""


class PriceUpdateError(ModelForgeError):
    """Refreshing the models.dev catalog failed; the previous cache is kept."""


class ReconcileError(ModelForgeError):
    """Reconciling with a provider's billing failed; nothing partial is shown or stored.

    Messages never contain the admin key.
    """


class BillingAPIError(ReconcileError):
    """A billing (Admin) API answered with an error, or kept failing past the retry budget."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class ContextWindowExceededError(ModelForgeError):
    """A prompt (plus the output it may ask for) does not fit the model's context window.

    Raised on purpose, before a request is sent: like a budget block, a deliberate
    exception to "never break the user's call".
    """

    def __init__(self, model: str, used: int, limit: int, max_output_tokens: int = 0) -> None:
        self.model = model
        self.used = used
        self.limit = limit
        self.max_output_tokens = max_output_tokens
        wanted = f"{used:,} prompt tokens"
        if max_output_tokens:
            wanted += f" + {max_output_tokens:,} max output tokens"
        super().__init__(f"{model}: {wanted} exceed its context window of {limit:,} tokens")


class BudgetError(ModelForgeError, ValueError):
    """A budget definition (in code, config.toml or `modelforge budget set`) is invalid."""


class BudgetExceededError(ModelForgeError):
    """A `block` budget (or a `throttle` that waited its longest) stopped a call before its
    request was sent: the one deliberate exception to "never break the user's call",
    beside the context-window guard.

    `budget` is the `Budget`; `spent` is what the calls it covers have spent this period,
    in its unit (a `Decimal` of USD for a USD budget, else tokens), with both figures in
    `spent_usd` and `spent_tokens`; `resets_at` is when the period ends (an aware
    `datetime`, None for a `total` budget; for a rolling window, when everything spent
    in it so far has left it).
    """

    def __init__(
        self,
        budget: Any,
        spent_usd: Decimal,
        spent_tokens: int,
        resets_at: datetime | None,
        message: str,
    ) -> None:
        self.budget = budget
        self.spent_usd = spent_usd
        self.spent_tokens = spent_tokens
        self.resets_at = resets_at
        super().__init__(message)

    @property
    def spent(self) -> Decimal | int:
        return self.spent_usd if self.budget.usd is not None else self.spent_tokens


class UnsupportedMessageError(ModelForgeError, TypeError):
    """A message or tool definition is in no shape model-forge can count."""


def missing_extra(exc: ModuleNotFoundError, extra: str) -> ModuleNotFoundError:
    """`exc` for a framework that is not installed, naming the extra that installs it."""
    return ModuleNotFoundError(
        f"{exc.msg}; model-forge's {extra} integration needs it: "
        f"pip install 'model-forge[{extra}]'",
        name=exc.name,
    )
