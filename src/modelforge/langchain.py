"""`from modelforge.langchain import UsageCallbackHandler` (needs the `[langchain]` extra)."""

from modelforge.integrations.langchain import UsageCallbackHandler

__all__ = ["UsageCallbackHandler"]
