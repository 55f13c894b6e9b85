"""`from modelforge.llamaindex import instrument` (needs the `[llamaindex]` extra)."""

from modelforge.integrations.llamaindex import (
    UsageCallbackHandler,
    UsageEventHandler,
    instrument,
    uninstrument,
)

__all__ = ["UsageCallbackHandler", "UsageEventHandler", "instrument", "uninstrument"]
