"""`modelforge prices update`: refresh the fetched price layer in the user cache dir."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from modelforge.errors import PriceTableError, PriceUpdateError
from modelforge.pricing.catalog import (
    CatalogEntry,
    Layer,
    compact,
    fetched_data,
    load_json_text,
    models_dev_cache_path,
    models_dev_meta_path,
    parse_api_json,
    set_catalog,
)

DEFAULT_URL = "https://models.dev/api.json"


@dataclass(frozen=True)
class UpdateResult:
    url: str
    path: Path
    fetched_at: str
    models: int
    added: int
    removed: int
    changed: int
    skipped: int


def update_models_dev(url: str = DEFAULT_URL, timeout: float = 30.0) -> UpdateResult:
    """Download a models.dev catalog and make it the fetched layer.

    Nothing is replaced unless the download parses and prices at least one model, so a
    failed update keeps the previous cache. It is saved in the compact form of the base
    layer, so loading it later costs what loading the base layer does.
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        exc.close()  # an HTTPError holds the open response
        raise PriceUpdateError(
            f"cannot download {url}: HTTP {exc.code} {exc.reason}; kept the previous catalog"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PriceUpdateError(
            f"cannot download {url}: {reason}; kept the previous catalog"
        ) from None
    try:
        data = load_json_text(body, url)
        entries, errors = parse_api_json(data, url, strict=False)
    except PriceTableError as exc:
        raise PriceUpdateError(f"{exc}; kept the previous catalog") from None
    if not entries:
        raise PriceUpdateError(f"{url} has no priced models; kept the previous catalog")
    previous = {e.key.lower(): e for e in Layer("previous", fetched_data).entries()}
    current = {e.key.lower(): e for e in entries}
    changed = sum(1 for k, e in current.items() if k in previous and _differs(previous[k], e))
    fetched_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    path = models_dev_cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = compact(data, source=url, as_of=fetched_at)
    _write_atomically(path, json.dumps(saved, default=str, separators=(",", ":")).encode())
    _write_atomically(
        models_dev_meta_path(), json.dumps({"url": url, "fetched_at": fetched_at}).encode()
    )
    set_catalog(None)
    return UpdateResult(
        url=url,
        path=path,
        fetched_at=fetched_at,
        models=len(current),
        added=len(current.keys() - previous.keys()),
        removed=len(previous.keys() - current.keys()),
        changed=changed,
        skipped=len(errors),
    )


def _differs(old: CatalogEntry, new: CatalogEntry) -> bool:
    def priced(e: CatalogEntry) -> tuple[object, ...]:
        return (e.prices, e.tiers, dict(e.modes), dict(e.mode_tiers))

    return priced(old) != priced(new)


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
