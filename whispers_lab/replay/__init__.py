"""Offline replay of logged whispers requests: ranking metrics, off-policy estimates, tuning.

Modules: :mod:`~whispers_lab.replay.metrics` (vectorised NDCG / MRR / hit / precision at k),
:mod:`~whispers_lab.replay.ope` (slate off-policy estimators), :mod:`~whispers_lab.replay.uncertainty`
(bootstrap / delta-method intervals, paired comparisons), :mod:`~whispers_lab.replay.engine`
(orchestration over a prepared :class:`ReplayData`), :mod:`~whispers_lab.replay.tuning` (weight
search with a user holdout) and :mod:`~whispers_lab.replay.synthetic` (seeded logs with known
truth). See ``docs/replay.md``.
"""

from .engine import (
    ReplayData,
    ReplayResult,
    SanityCheck,
    compare_off_policy,
    compare_replay,
    logged_ctr,
    logger_sanity,
    off_policy,
    position_curve,
    prepare_replay,
    replay,
)
from .ope import ESTIMATORS, RECOMMENDED, Estimate, estimates_frame
from .tuning import TuningResult, save_tuned, split_by_user, tune

__all__ = [
    "ESTIMATORS",
    "RECOMMENDED",
    "Estimate",
    "ReplayData",
    "ReplayResult",
    "SanityCheck",
    "TuningResult",
    "compare_off_policy",
    "compare_replay",
    "estimates_frame",
    "logged_ctr",
    "logger_sanity",
    "off_policy",
    "position_curve",
    "prepare_replay",
    "replay",
    "save_tuned",
    "split_by_user",
    "tune",
]
