"""Stored results you can use: typed tables, the judges listing, results filters on traces,
comparisons and per-step series. :class:`~manta_lib.service.MantaService` exposes them as
methods (``results``, ``judges``, ``compare_runs`` ...); this package is the one query layer
for stored results."""

from manta_lib.results.catalog import ColumnInfo, JudgeInfo, JudgeVersionInfo, list_judges
from manta_lib.results.compare import (
    Agreement,
    CategoricalShift,
    ColumnAgreement,
    NumericShift,
    RunComparison,
)
from manta_lib.results.conditions import ResultsFilter, compile_trace_condition
from manta_lib.results.expr import parse_condition
from manta_lib.results.table import ResultsQuery, results_arrow, results_frame

__all__ = [
    "Agreement",
    "CategoricalShift",
    "ColumnAgreement",
    "ColumnInfo",
    "JudgeInfo",
    "JudgeVersionInfo",
    "NumericShift",
    "ResultsFilter",
    "ResultsQuery",
    "RunComparison",
    "compile_trace_condition",
    "list_judges",
    "parse_condition",
    "results_arrow",
    "results_frame",
]
