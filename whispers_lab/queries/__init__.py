"""SQL text, grouped by what it measures. Each function takes an opened
:class:`whispers_lab.export.Export` and returns small aggregated DataFrames: the heavy work
happens in DuckDB, never in pandas."""
