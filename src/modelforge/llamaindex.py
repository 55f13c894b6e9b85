"""`from modelforge.llamaindex import instrument` (needs the `[llamaindex]` extra)."""

from typing import Any

from modelforge.integrations import llamaindex as _integration
from modelforge.integrations.llamaindex import (
    LlamaIndexCallbackHandler,
    UsageEventHandler,
    instrument,
    uninstrument,
)

__all__ = ["LlamaIndexCallbackHandler", "UsageEventHandler", "instrument", "uninstrument"]


def __getattr__(name: str) -> Any:
    if name == "UsageCallbackHandler":
        return _integration.UsageCallbackHandler  # the deprecated name: it warns
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
