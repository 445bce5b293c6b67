"""SQL of the net sentiment score (issue 15, "Positive user sentiment"): survey answers per user.

One row of sufficient statistics over the users who answered the in-app survey in a window:
per user, ``answers`` (ratings given), ``positive`` and ``negative`` (ratings in the plan's
positive / negative sets) and ``net = positive - negative``; summed, with the squares and the
cross-product the delta method needs (:class:`whispers_lab.stats.sufficient.RatioStat` of
``net / answers`` clustered by user). Internal users are left out, as for the other survey
metrics (:func:`whispers_lab.queries.experiment.feedback_units`); the cohort relation must be
registered (:func:`whispers_lab.queries.experiment.register_cohort`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from ..export import Export
from .experiment import COHORT_RELATION

#: Columns of :func:`sentiment_units`' one row.
SENTIMENT_COLUMNS: tuple[str, ...] = ("n", "sum_num", "sum_den", "sum_num2", "sum_den2",
                                      "sum_num_den", "positive", "negative")


def _int_list(values: Sequence[int]) -> str:
    ints = [int(v) for v in values]
    return "[" + ", ".join(str(v) for v in ints) + "]::INTEGER[]"


def sentiment_units(export: Export, lo: dt.datetime, hi: dt.datetime,
                    positive: Sequence[int], negative: Sequence[int]) -> dict[str, Any]:
    """Sufficient statistics of the net score over answers submitted in ``[lo, hi)``:
    ``n`` users, ``sum_num`` (net), ``sum_den`` (answers), ``sum_num2``, ``sum_den2``,
    ``sum_num_den``, and the ``positive`` / ``negative`` answer counts. Zeros without answers."""
    query = f"""
    WITH per_user AS (
        SELECT f.user_id, count(*)::DOUBLE AS answers,
               count(*) FILTER (WHERE list_contains({_int_list(positive)}, f.rating))::DOUBLE
                   AS positive,
               count(*) FILTER (WHERE list_contains({_int_list(negative)}, f.rating))::DOUBLE
                   AS negative
        FROM feedback f JOIN {COHORT_RELATION} c ON c.user_id = f.user_id
        WHERE f.submitted_at >= $lo AND f.submitted_at < $hi AND c.reason <> 'internal'
          AND f.rating IS NOT NULL
        GROUP BY f.user_id
    )
    SELECT count(*) AS n, coalesce(sum(positive - negative), 0) AS sum_num,
           coalesce(sum(answers), 0) AS sum_den,
           coalesce(sum((positive - negative) * (positive - negative)), 0) AS sum_num2,
           coalesce(sum(answers * answers), 0) AS sum_den2,
           coalesce(sum((positive - negative) * answers), 0) AS sum_num_den,
           coalesce(sum(positive), 0) AS positive, coalesce(sum(negative), 0) AS negative
    FROM per_user
    """
    row = export.sql(query, {"lo": lo, "hi": hi}).iloc[0]
    return {k: (int(row[k]) if k == "n" else float(row[k])) for k in SENTIMENT_COLUMNS}
