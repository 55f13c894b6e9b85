"""model-forge: exact token usage and USD cost for every LLM call.

Public names are imported lazily, so `import modelforge` stays fast and never pulls in
LangChain or LlamaIndex.

>>> from decimal import Decimal
>>> import modelforge
>>> usage = modelforge.Usage(input_tokens=1000, output_tokens=500)
>>> modelforge.price("gpt-4o-mini", usage).total == Decimal("0.00045")  # 1000×0.15 + 500×0.6
True
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Usage": "modelforge.usage",
    "extract_usage": "modelforge.usage",
    "Cost": "modelforge.pricing.cost",
    "price": "modelforge.pricing.cost",
    "CallRecord": "modelforge.records",
    "track_usage": "modelforge.session",
    "UsageSession": "modelforge.session",
    "on_record": "modelforge.hooks",
    "flush": "modelforge.store",
    "stats": "modelforge.store",
    "UsageLog": "modelforge.store",
    "UsageCallbackHandler": "modelforge.integrations.langchain",
    "count_tokens": "modelforge.tokens",
    "check_context": "modelforge.tokens",
    "estimate_cost": "modelforge.tokens",
    "TokenCount": "modelforge.tokens",
    "ContextCheck": "modelforge.tokens",
    "CostEstimate": "modelforge.tokens",
    "Budget": "modelforge.budgets",
    "BudgetAlert": "modelforge.alerts",
    "on_alert": "modelforge.alerts",
    "flush_alerts": "modelforge.alerts",
    "BudgetError": "modelforge.errors",
    "BudgetExceededError": "modelforge.errors",
    "ModelForgeError": "modelforge.errors",
    "UnknownModelError": "modelforge.errors",
    "PriceTableError": "modelforge.errors",
    "ConfigError": "modelforge.errors",
    "UsageLogError": "modelforge.errors",
    "PriceUpdateError": "modelforge.errors",
    "ContextWindowExceededError": "modelforge.errors",
    "UnsupportedMessageError": "modelforge.errors",
}

__all__ = [
    "Budget",
    "BudgetAlert",
    "BudgetError",
    "BudgetExceededError",
    "CallRecord",
    "ConfigError",
    "ContextCheck",
    "ContextWindowExceededError",
    "Cost",
    "CostEstimate",
    "ModelForgeError",
    "PriceTableError",
    "PriceUpdateError",
    "TokenCount",
    "UnknownModelError",
    "UnsupportedMessageError",
    "Usage",
    "UsageCallbackHandler",
    "UsageLog",
    "UsageLogError",
    "UsageSession",
    "check_context",
    "count_tokens",
    "estimate_cost",
    "extract_usage",
    "flush",
    "flush_alerts",
    "on_alert",
    "on_record",
    "price",
    "stats",
    "track_usage",
]

if TYPE_CHECKING:
    from modelforge.alerts import BudgetAlert, flush_alerts, on_alert
    from modelforge.budgets import Budget
    from modelforge.errors import (
        BudgetError,
        BudgetExceededError,
        ConfigError,
        ContextWindowExceededError,
        ModelForgeError,
        PriceTableError,
        PriceUpdateError,
        UnknownModelError,
        UnsupportedMessageError,
        UsageLogError,
    )
    from modelforge.hooks import on_record
    from modelforge.integrations.langchain import UsageCallbackHandler
    from modelforge.pricing.cost import Cost, price
    from modelforge.records import CallRecord
    from modelforge.session import UsageSession, track_usage
    from modelforge.store import UsageLog, flush, stats
    from modelforge.tokens import (
        ContextCheck,
        CostEstimate,
        TokenCount,
        check_context,
        count_tokens,
        estimate_cost,
    )
    from modelforge.usage import Usage, extract_usage


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'modelforge' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
