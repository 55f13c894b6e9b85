"""Import first in a bench: user dirs go to a temporary folder, so benches never touch
the real usage log or settings, and tiktoken uses the shared offline cache."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

HOME = tempfile.mkdtemp(prefix="modelforge-bench-")
atexit.register(shutil.rmtree, HOME, True)
for _var, _sub in (("CONFIG", "config"), ("CACHE", "cache"), ("DATA", "data")):
    os.environ[f"MODELFORGE_{_var}_DIR"] = os.path.join(HOME, _sub)
for _var in ("MODELFORGE_DB", "MODELFORGE_PRICES", "MODELFORGE_TELEMETRY", "DO_NOT_TRACK"):
    os.environ.pop(_var, None)
_TIKTOKEN_CACHE = Path(__file__).resolve().parents[2] / "shared" / "tiktoken-cache"
if _TIKTOKEN_CACHE.is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(_TIKTOKEN_CACHE))
