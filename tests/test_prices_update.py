"""`modelforge prices update` against a loopback server serving models.dev's api.json."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from modelforge import Usage, price
from modelforge.cli import cli
from modelforge.pricing.catalog import models_dev_cache_path

CATALOG: dict[str, Any] = {
    "openai": {
        "id": "openai",
        "models": {
            "gpt-4o": {
                "id": "gpt-4o",
                "name": "GPT-4o",
                "cost": {"input": 2.5, "output": 10, "cache_read": 1.25},
                "limit": {"context": 128000, "output": 16384},
            },
            "gpt-4o-mini": {
                "id": "gpt-4o-mini",
                "name": "GPT-4o mini",
                "cost": {"input": 0.15, "output": 0.6},
                "limit": {"context": 128000, "output": 16384},
            },
            "no-price-yet": {"id": "no-price-yet", "name": "No price"},
        },
    }
}


class _Catalogs:
    """What the loopback server answers, per path."""

    def __init__(self) -> None:
        self.bodies: dict[str, tuple[int, bytes]] = {}


@pytest.fixture
def models_dev() -> Iterator[tuple[str, _Catalogs]]:
    catalogs = _Catalogs()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = catalogs.bodies.get(self.path, (404, b"not found"))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", catalogs
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _update(url: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["prices", "update", "--url", url])
    return result.exit_code, result.output


def test_update_refreshes_reports_changes_and_keeps_cache_on_failure(
    models_dev: tuple[str, _Catalogs],
) -> None:
    base, catalogs = models_dev
    catalogs.bodies["/api.json"] = (200, json.dumps(CATALOG).encode())
    code, out = _update(f"{base}/api.json")
    assert code == 0, out
    assert "Updated 2 models" in out and "0 changed, 2 added, 0 removed" in out

    usage = Usage(input_tokens=1000, output_tokens=100)
    cost = price("gpt-4o", usage)
    assert cost.source is not None and cost.source.startswith("fetched:")
    assert cost.total == Decimal("0.0035")  # 1000×2.5 + 100×10 per 1M

    changed = json.loads(json.dumps(CATALOG))
    changed["openai"]["models"]["gpt-4o"]["cost"]["input"] = 2.0
    catalogs.bodies["/api.json"] = (200, json.dumps(changed).encode())
    code, out = _update(f"{base}/api.json")
    assert code == 0
    assert "1 changed, 0 added, 0 removed" in out
    assert price("gpt-4o", usage).total == Decimal("0.003")  # 1000×2.0 + 100×10 per 1M

    kept = models_dev_cache_path().read_bytes()
    catalogs.bodies["/broken.json"] = (200, b'{"openai": {"models": ')
    for url in (f"{base}/missing.json", f"{base}/broken.json", "http://127.0.0.1:9/api.json"):
        code, out = _update(url)
        assert code == 1
        assert out.startswith("Error: ") and "kept the previous catalog" in out
        assert models_dev_cache_path().read_bytes() == kept
    assert price("gpt-4o", usage).total == Decimal("0.003")


def test_update_with_the_full_models_dev_catalog(
    models_dev: tuple[str, _Catalogs], models_dev_path: Path
) -> None:
    base, catalogs = models_dev
    catalogs.bodies["/api.json"] = (200, models_dev_path.read_bytes())
    code, out = _update(f"{base}/api.json")
    assert code == 0, out
    raw = json.loads(models_dev_path.read_text())
    priced = sum(1 for p in raw.values() for m in p["models"].values() if m.get("cost"))
    assert f"Updated {priced} models" in out
    # A model only the big catalog has is now priced from it.
    cost = price("gpt-5.5", Usage(input_tokens=1000, output_tokens=100), "openai")
    gpt55 = raw["openai"]["models"]["gpt-5.5"]["cost"]
    expected = (
        Decimal(str(gpt55["input"])) * 1000 + Decimal(str(gpt55["output"])) * 100
    ) / 1_000_000
    assert cost.total == expected
