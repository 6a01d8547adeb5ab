"""Settings and the product catalogue: everything a deployment may change, in one place."""

from choreo.config.catalogue import CATALOGUE, Product, BusinessRules, RULES
from choreo.config.settings import Settings

__all__ = ["CATALOGUE", "Product", "BusinessRules", "RULES", "Settings"]
