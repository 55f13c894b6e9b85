"""Whether tiktoken's encodings are on this machine's disk.

`conftest.py` points TIKTOKEN_CACHE_DIR at `../shared/tiktoken-cache` when that exists.
Without it, estimates fall back to `chars/4` (see test_estimate.py), so tests that
assert exact tiktoken counts are skipped, with this reason.
"""

from __future__ import annotations

import pytest

from modelforge.tokens import encoding_on_disk

ENCODINGS_ON_DISK = all(encoding_on_disk(e) for e in ("o200k_base", "cl100k_base"))

needs_encodings = pytest.mark.skipif(
    not ENCODINGS_ON_DISK,
    reason="tiktoken's o200k_base and cl100k_base are not on disk; set TIKTOKEN_CACHE_DIR "
    "(the tests use ../shared/tiktoken-cache when it exists)",
)
