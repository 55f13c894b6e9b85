"""Pricing: the catalog layers, model-id resolution and the `Decimal` calculator."""

from modelforge.pricing.catalog import Catalog, CatalogEntry, Prices, get_catalog, set_catalog
from modelforge.pricing.cost import Cost, cost_for, price

__all__ = [
    "Catalog",
    "CatalogEntry",
    "Cost",
    "Prices",
    "cost_for",
    "get_catalog",
    "price",
    "set_catalog",
]
