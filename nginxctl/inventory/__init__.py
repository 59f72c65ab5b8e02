"""The inventory: its schema, its grammar for values, loading with located errors, and the model.

Everything here is a function of data: no file, Docker or network access.
"""

from .load import check_capacity, parse_inventory
from .model import Group, Inventory, NginxSettings, Server, Target
from .schema import json_schema, reference_markdown

__all__ = ["check_capacity", "parse_inventory", "Inventory", "Group", "Server", "NginxSettings", "Target",
           "json_schema", "reference_markdown"]
