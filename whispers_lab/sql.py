"""Quoting for SQL text: the only way a path, a name or user text enters a query.

Leaf module (imports nothing of the lab), shared by :mod:`whispers_lab.export`,
:mod:`whispers_lab.validation` and the query modules.
"""

from __future__ import annotations


def sql_string(value: str) -> str:
    """A SQL string literal: the only way a path or user text enters SQL text."""
    return "'" + str(value).replace("'", "''") + "'"


def sql_ident(name: str) -> str:
    """A quoted SQL identifier (table or column name)."""
    return '"' + str(name).replace('"', '""') + '"'
