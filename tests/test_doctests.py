"""The `>>>` examples in our docstrings run and show what they claim."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "modelforge",
    "modelforge.usage",
    "modelforge.pricing.cost",
    "modelforge.session",
    "modelforge.money",
    "modelforge.hooks",
    "modelforge.providers",
    "modelforge.integrations.langchain",
    "modelforge.integrations.llamaindex",
    "modelforge.messages",
    "modelforge.budgets",
    "modelforge.alerts",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
