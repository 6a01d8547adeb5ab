"""The product catalogue, starting stock and the business rules the services apply.

Prices are integer cents. Starting stock is written to Redis by the first inventory worker that
finds a product's stock key missing (see workers.inventory.seed_stock); it is never overwritten.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Product:
    id: int
    name: str
    price_cents: int
    stock: int


CATALOGUE: dict[int, Product] = {
    p.id: p
    for p in (
        Product(101, "Widget", 1999, 1_000_000),
        Product(102, "Gadget", 4999, 200_000),
        Product(103, "Limited print", 25_000, 5),
    )
}


@dataclass(frozen=True)
class BusinessRules:
    # Payment declines any single order whose total is above this (a card limit).
    card_limit_cents: int = 500_000
    # Shipping cannot book a parcel holding more items than this.
    parcel_max_items: int = 50


RULES = BusinessRules()
