"""Generate model-forge's base price layer from a models.dev `api.json` snapshot.

    python scripts/build_base_prices.py                 # ../shared/models-dev/api.json
    python scripts/build_base_prices.py api.json --as-of 2026-12

Writes `src/modelforge/pricing/data/base_prices.json`: every model that has a `cost`,
keyed by lower-cased model id and then provider, keeping only the fields the price
parser reads (`modelforge.pricing.catalog.compact`). Prices record `models.dev:<as-of>`
as their source, so pass the snapshot's month with `--as-of` whenever the snapshot
changes. The snapshot itself is not shipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from modelforge.pricing.catalog import (  # noqa: E402
    BASE_RESOURCE,
    compact,
    load_json_text,
    parse_model,
)

DEFAULT_SNAPSHOT = REPO.parent / "shared" / "models-dev" / "api.json"
DEFAULT_AS_OF = "2026-07"
OUTPUT = REPO / "src" / "modelforge" / "pricing" / "data" / BASE_RESOURCE


def _number(value: object) -> float:
    """A price as the JSON number it was read from: models.dev writes float64 shortest
    round-trip text, so the float prints the same digits. Anything else is refused."""
    if not isinstance(value, Decimal):
        raise TypeError(f"cannot write {value!r}")
    as_float = float(value)
    if Decimal(repr(as_float)) != value:
        raise ValueError(f"{value} does not survive a float round trip")
    return as_float


def _dump(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=_number)


def render(data: dict[str, object]) -> str:
    """The compact layer as JSON, one model per line so snapshot updates diff well."""
    models = data.pop("models")
    assert isinstance(models, dict)
    head = json.dumps(data, separators=(",", ":"), sort_keys=True)
    lines = [f"{json.dumps(key)}:{_dump(models[key])}" for key in sorted(models)]
    return head[:-1] + ',"models":{\n' + ",\n".join(lines) + "\n}}\n"


def check(text: str, as_of: str) -> int:
    """Parse every row of the written file strictly; return how many models it prices."""
    data = load_json_text(text, BASE_RESOURCE)
    count = 0
    for key, rows in data["models"].items():
        for provider, row in rows.items():
            parse_model(provider, row.get("id", key), row, f"models.dev:{as_of}", BASE_RESOURCE)
            count += 1
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("snapshot", nargs="?", type=Path, default=DEFAULT_SNAPSHOT)
    parser.add_argument("--as-of", default=DEFAULT_AS_OF, help="snapshot month, YYYY-MM")
    parser.add_argument("-o", "--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    raw = load_json_text(args.snapshot.read_bytes(), str(args.snapshot))
    text = render(compact(raw, source="models.dev", as_of=args.as_of))
    count = check(text, args.as_of)
    args.output.write_text(text, encoding="utf-8")
    providers = {p for rows in json.loads(text)["models"].values() for p in rows}
    print(
        f"wrote {args.output} ({len(text.encode()):,} bytes): "
        f"{count} models from {len(providers)} providers, models.dev:{args.as_of}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
