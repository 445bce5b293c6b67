"""Treatment-vs-control statistics over sufficient statistics (see ``docs/statistics.md``).

Public entry: :func:`experiment_results` (one rollout day, everything) returning
:class:`ExperimentResults`. The building blocks are pure functions in the submodules:
:mod:`.sufficient`, :mod:`.noninferiority`, :mod:`.sequential`, :mod:`.cuped`, :mod:`.srm`,
:mod:`.rates`, :mod:`.canary`, :mod:`.survival`, :mod:`.power`, :mod:`.retention`.
"""

from __future__ import annotations

from .experiment import CANARY_METRICS, ExperimentResults, experiment_results
from .settings import StatSettings

__all__ = ["CANARY_METRICS", "ExperimentResults", "StatSettings", "experiment_results"]
