"""The simulator's driver: population, then a loop over days, then tables and truth.

Every day (pre-period days -14..-1 and rollout days 0..through_day) is generated vectorised
over users and events; only the day loop itself is Python. Day-to-day state (who was served
treatment since when, who was exposed, the last Maya cue) lives in
:class:`~whispers_lab.simulate.activity.State`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from .. import cohort
from ..contract import PRIORITIES, TABLES, WHISPERS_ENDPOINT
from ..export import write_export
from ..plan import Plan, load_plan
from ..progress import Progress, advance, stage
from ..state import Stage, simulated_state
from .activity import NOT_EXPOSED, SERVED_TREATMENT, State, day_exposures_served, day_opens
from .feedback import CATEGORIES, feedback, maya_cues, tickets
from .ids import format_ids
from .ops import (
    OTHER_ENDPOINTS,
    WEIGHTS_TABLE,
    Requests,
    db_metrics,
    other_requests,
    prefetch_requests,
    whispers_attributes,
)
from .params import PRE_DAYS, ModelParams
from .population import Population, make_population
from .ranking import candidates_table, memory_ids, rank_requests
from .rng import stream
from .rollback import flips, recap_factor, served_after_flip
from .rollout import Serving, flag_log, stages_truth, timeline, with_rollback_flips
from .scenarios import Scenario, ScenarioRequest, SimulationError, active, resolve
from .timeline import US_PER_SECOND, Calendar, to_arrow_ts
from .truth import build_truth, truth_path, write_truth

REQUEST_ID_WIDTH = 11
EVENT_ID_WIDTH = 12
TICKET_ID_WIDTH = 9
ENDPOINTS: tuple[str, ...] = (WHISPERS_ENDPOINT, *OTHER_ENDPOINTS)
EVENT_TYPES: tuple[str, ...] = ("app_open", "whispers_shown", "whispers_used", "maya_cue_fired")
WEIGHT_SOURCE_OF = np.array([0] * (len(WEIGHTS_TABLE) - 1) + [1])  # 0 user, 1 fallback
WEIGHT_SOURCES = ("user", "fallback")
VERSIONS = tuple(w.version for w in WEIGHTS_TABLE)


@dataclass(frozen=True, eq=False)
class SimulatedExport:
    """A simulated export in memory: contract tables as Arrow tables, plus the truth dict."""

    tables: Mapping[str, pa.Table]
    truth: dict[str, Any]
    plan: Plan

    def frame(self, name: str) -> pd.DataFrame:
        """One table as pandas."""
        return self.tables[name].to_pandas()

    def to_pandas(self) -> dict[str, pd.DataFrame]:
        return {name: t.to_pandas() for name, t in self.tables.items()}

    def row_counts(self) -> dict[str, int]:
        return {name: t.num_rows for name, t in self.tables.items()}

    def write(self, path: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write the export (DuckDB file, or Parquet folder if ``path`` ends in ``/``) and its
        truth sidecar, both atomically. Returns (export path, truth path)."""
        out = write_export(dict(self.tables), path)
        return out, write_truth(self.truth, truth_path(path))


def _dict_strings(indices: np.ndarray, values: Sequence[str], null: np.ndarray | None = None) -> pa.Array:
    """Strings from small-vocabulary indices (plain ``string`` type, not a dictionary)."""
    idx = pa.array(np.asarray(indices, dtype=np.int32), mask=null)
    return pa.DictionaryArray.from_arrays(idx, pa.array(list(values), pa.string())).cast(pa.string())


def _resolve_plan(plan: Plan | str | os.PathLike[str] | None, start_date: Any) -> Plan:
    p = plan if isinstance(plan, Plan) else load_plan(plan)
    if start_date is not None:
        if isinstance(start_date, str):
            try:
                start_date = dt.date.fromisoformat(start_date)
            except ValueError:
                raise SimulationError(f"start date {start_date!r} is not YYYY-MM-DD") from None
        if isinstance(start_date, dt.datetime):
            start_date = start_date.date()
        p = dataclasses.replace(p, start_date=start_date)
    return p


class _Collector:
    """Keeps each day's tables in memory (for :func:`simulate`)."""

    def __init__(self) -> None:
        self.parts: dict[str, list[pa.Table]] = {t.name: [] for t in TABLES}
        self.rows: dict[str, int] = {t.name: 0 for t in TABLES}
        self.schemas = _empty_schema_tables()

    def add(self, name: str, table: pa.Table) -> None:
        if table.num_rows:
            table = table.cast(self.schemas[name])
            self.rows[name] += table.num_rows
            self._store(name, table)

    def _store(self, name: str, table: pa.Table) -> None:
        self.parts[name].append(table)

    def table(self, name: str) -> Any:
        parts = self.parts[name]
        if not parts:
            return self.schemas[name].empty_table()
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]


class _SpillCollector(_Collector):
    """Writes each day's tables to uncompressed Arrow IPC files in ``folder`` and hands them
    back as streaming readers (for :func:`simulate_to`: memory stays near one day of data)."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder
        self.files: dict[str, list[Path]] = {t.name: [] for t in TABLES}

    def _store(self, name: str, table: pa.Table) -> None:
        path = self.folder / f"{name}-{len(self.files[name]):05d}.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=1 << 17)
        self.files[name].append(path)

    def table(self, name: str) -> Any:
        files = self.files[name]
        if not files:
            return self.schemas[name].empty_table()

        def batches() -> Iterator[pa.RecordBatch]:
            for f in files:
                with pa.memory_map(str(f), "r") as source:
                    reader = pa.ipc.open_file(source)
                    for i in range(reader.num_record_batches):
                        yield reader.get_batch(i)

        return pa.RecordBatchReader.from_batches(self.schemas[name], batches())


def _empty_schema_tables() -> dict[str, pa.Schema]:
    ts = pa.timestamp("us")
    s = pa.string()
    return {
        "exposures": pa.schema([("user_id", s), ("exposed_at", ts), ("variant", s)]),
        "telemetry": pa.schema([("event_id", s), ("created_at", ts), ("user_id", s), ("device_id", s),
                                ("event_type", s), ("request_id", s), ("whisper_id", s),
                                ("position", pa.int32())]),
        "api_logs": pa.schema([("request_id", s), ("timestamp", ts), ("endpoint", s), ("user_id", s),
                               ("device_id", s), ("status", pa.int32()), ("duration_ms", pa.float64()),
                               ("ranking_ms", pa.float64()), ("weight_source", s),
                               ("weights_version", s)]),
        "ranking_candidates": pa.schema([("request_id", s), ("memory_id", s),
                                         ("context_similarity", pa.float64()),
                                         ("recency_hours", pa.float64()), ("use_count", pa.int32()),
                                         ("last_shown_hours", pa.float64()), ("pinned", pa.bool_()),
                                         ("logged_score", pa.float64()),
                                         ("shown_position", pa.int32()),
                                         ("propensity", pa.float64())]),
        "feedback": pa.schema([("user_id", s), ("submitted_at", ts), ("rating", pa.int32()),
                               ("relevant", pa.bool_())]),
        "support_tickets": pa.schema([("ticket_id", s), ("created_at", ts), ("user_id", s),
                                      ("category", s), ("priority", s), ("about_whispers", pa.bool_())]),
    }


def _served_first(pop: Population, plan: Plan, stages: Sequence[Stage], cal: Calendar,
                  scenarios: Sequence[Scenario], seed: int, planted: list[dict[str, Any]]
                  ) -> tuple[np.ndarray, Serving]:
    """First day each user is served whispers (the stages' enabling day, or a planted srm
    leak's day) and the :class:`Serving` that says who is served at any time."""
    dated = simulated_state(plan, stages, cal.through_day).dated_plan()
    bucket, category, intended = cohort.categories(pop.users_frame(), dated)
    serving = Serving.build(plan, stages, cal.through_day, bucket, category)
    served = np.asarray(intended, dtype=np.float64).copy()
    for i, s in enumerate(scenarios):
        if s.name == "srm":
            rng = stream(seed, f"srm:{i}")
            cand = np.flatnonzero(served > s.day)
            leak = cand[rng.random(cand.size) < float(s.params["share"])]
            served[leak] = s.day
            serving.leak_us[leak] = np.minimum(serving.leak_us[leak], cal.day_start_us(s.day))
            planted[i].update({"leaked_users": int(leak.size),
                               "leaked_user_ids_sample": pop.user_id.take(pa.array(leak[:50])).to_pylist()})
        elif s.name == "stale_flags":
            rng = stream(seed, f"stale:{i}")
            to_control = s.params["direction"] == "control"
            # whispers: users the stage keeps in control that day; control: users a stage
            # switches on (they were control before) at or after that day
            cand = (np.flatnonzero(np.isfinite(served) & (category == cohort.CATEGORY_BUCKETED))
                    if to_control else np.flatnonzero(served > s.day))
            pick = cand[rng.random(cand.size) < float(s.params["share"])]
            serving.stale[pick] = True
            serving.stale_from_us = cal.day_start_us(s.day)
            serving.stale_to_control = to_control
            planted[i].update({"users": int(pick.size), "direction": s.params["direction"],
                               "user_ids_sample": pop.user_id.take(pa.array(pick[:50])).to_pylist()})
    return served, serving


def _mismatched_users(pop: Population, served: np.ndarray, scenarios: Sequence[Scenario],
                      seed: int, planted: list[dict[str, Any]]) -> np.ndarray:
    mask = np.zeros(pop.n, dtype=bool)
    for i, s in enumerate(scenarios):
        if s.name != "device_weight_mismatch":
            continue
        rng = stream(seed, f"mismatch:{i}")
        cand = np.flatnonzero((pop.n_devices >= 2) & (served <= s.day))
        k = min(cand.size, max(int(s.params["min_users"]), round(float(s.params["share"]) * cand.size)))
        pick = np.sort(rng.choice(cand, k, replace=False))
        mask[pick] = True
        planted[i].update({"users": int(k),
                           "user_ids_sample": pop.user_id.take(pa.array(pick[:200])).to_pylist(),
                           "stale_weights_version": WEIGHTS_TABLE[-2].version})
    return mask


def simulate(users: int, seed: int, start_date: dt.date | str | None = None,
             through_day: int | None = None,
             scenarios: Iterable[str | ScenarioRequest | Mapping[str, Any]] = (),
             plan: Plan | str | os.PathLike[str] | None = None,
             params: ModelParams | None = None,
             progress: Progress | None = None, *,
             stages: Sequence[Stage] | None = None,
             with_flag_log: bool = True) -> SimulatedExport:
    """Simulate one rollout export in memory.

    ``users`` users, random ``seed``; ``start_date`` overrides the plan's day 0; rollout days
    0..``through_day`` (default ``plan.last_day``) after a 14-day pre-period; ``scenarios`` as
    ``"NAME[:key=value,...]"`` strings (see :mod:`whispers_lab.simulate.scenarios`). The same
    arguments always give the same data.

    ``stages``: the stages production went through (:class:`whispers_lab.state.Stage`, e.g. a
    rollout that followed the workbench's decisions, :mod:`.follow`); default: the plan's
    calendar, changed by the ``held_rollout`` / ``late_flip`` scenarios. ``with_flag_log``:
    write the ``flag_changes`` table (the state's first source); False leaves it out.
    """
    tables, truth, p = _run(users, seed, start_date, through_day, scenarios, plan, params,
                            _Collector(), progress, stages, with_flag_log)
    return SimulatedExport(tables, truth, p)


def simulate_to(path: str | os.PathLike[str], users: int, seed: int,
                start_date: dt.date | str | None = None, through_day: int | None = None,
                scenarios: Iterable[str | ScenarioRequest | Mapping[str, Any]] = (),
                plan: Plan | str | os.PathLike[str] | None = None,
                params: ModelParams | None = None,
                progress: Progress | None = None, *,
                stages: Sequence[Stage] | None = None,
                with_flag_log: bool = True) -> tuple[Path, Path]:
    """:func:`simulate` straight to disk: the export (a DuckDB file, or a Parquet folder when
    ``path`` ends in ``/``) and ``<export>.truth.json``, both atomically.

    Each simulated day is spilled to a scratch folder next to the output and streamed into
    :func:`whispers_lab.export.write_export`, so memory stays near one day's data (1M users fit
    in a few GB). The data are identical to :func:`simulate`'s. Returns (export, truth) paths.
    """
    target = Path(os.fspath(path).rstrip("/" + os.sep) or ".")
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.sim-", dir=target.parent))
    try:
        tables, truth, _ = _run(users, seed, start_date, through_day, scenarios, plan, params,
                                _SpillCollector(scratch), progress, stages, with_flag_log)
        rows = sum(truth["rows"].values())
        with stage(progress, "write export", rows, "rows") as st:
            out = write_export(tables, path)
            advance(st, rows)
        return out, write_truth(truth, truth_path(path))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(users: int, seed: int, start_date: Any, through_day: int | None, scenarios: Iterable[Any],
         plan: Any, params: ModelParams | None, out: _Collector,
         progress: Progress | None = None, stages: Sequence[Stage] | None = None,
         with_flag_log: bool = True) -> tuple[dict[str, Any], dict[str, Any], Plan]:
    if isinstance(users, bool) or not isinstance(users, (int, np.integer)) or users < 1:
        raise SimulationError(f"users must be an integer >= 1, got {users!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise SimulationError(f"seed must be an integer, got {seed!r}")
    params = params or ModelParams()
    plan = _resolve_plan(plan, start_date)
    through = plan.last_day if through_day is None else int(through_day)
    if through < 0:
        raise SimulationError(f"through_day must be >= 0, got {through}")
    cal = Calendar(plan.start_date, PRE_DAYS, through)
    scen = resolve(list(scenarios), plan, cal)
    planted: list[dict[str, Any]] = [{} for _ in scen]

    tl = timeline(plan, cal, scen, stages)
    with stage(progress, "population", int(users), "users") as st:
        pop = make_population(int(users), seed, cal, params)
        served, serving = _served_first(pop, plan, tl, cal, scen, seed, planted)
        mismatched = _mismatched_users(pop, served, scen, seed, planted)
        state = State.initial(pop.n)
        advance(st, pop.n)
    days = list(cal.days)
    with stage(progress, "days", len(days), "days") as st:
        for day in days:
            _simulate_day(day, pop, plan, cal, scen, served, serving, mismatched, state, params,
                          seed, plan.cue_cooldown_minutes, out, planted)
            advance(st)

    tables: dict[str, Any] = {"users": pop.users_table(), "db_metrics": db_metrics(cal, params, scen, seed)}
    rows = {"users": pop.n, "db_metrics": tables["db_metrics"].num_rows}
    logged = with_rollback_flips(plan, tl, [(s.day, s.end_us) for _, s in flips(scen)])
    if with_flag_log:
        tables["flag_changes"] = flag_log(plan, logged)
        rows["flag_changes"] = tables["flag_changes"].num_rows
    for name in ("exposures", "telemetry", "api_logs", "ranking_candidates", "feedback",
                 "support_tickets"):
        tables[name] = out.table(name)
        rows[name] = out.rows[name]
    tables = {t.name: tables[t.name] for t in TABLES if t.name in tables}
    dated = simulated_state(plan, tl, through)
    rollout = {"stages": stages_truth(logged), "flag_log": bool(with_flag_log),
               "follows_calendar": dated.dated_plan() == plan and not any(
                   s.at != plan.day_start(s.day) for s in tl),
               "schedule": {"stages": list(dated.schedule().stages),
                            "final_day": dated.schedule().final_day}}
    truth = build_truth(seed=seed, users=pop.n, plan=plan, through_day=through, params=params,
                        scenarios=scen, planted=planted,
                        rows={t.name: rows[t.name] for t in TABLES if t.name in rows},
                        rollout=rollout)
    return tables, truth, plan


# ---------------------------------------------------------------------------------------------


def _simulate_day(day: int, pop: Population, plan: Plan, cal: Calendar, scen: Sequence[Scenario],
                  served: np.ndarray, serving: Serving, mismatched: np.ndarray, state: State,
                  params: ModelParams, seed: int, cooldown: float, out: _Collector,
                  planted: list[dict[str, Any]]) -> None:
    end_us = cal.period_end_us
    opens = day_opens(pop, day, cal, state, params, scen, seed)

    # what each open was served (the stage in force at its time, planted faults), exposures
    status = state.exposure[opens.user]
    treated = serving.served(opens.user, opens.ts, status != NOT_EXPOSED,
                             status == SERVED_TREATMENT) if day >= 0 else np.zeros(len(opens), bool)
    e_user, e_ts, e_treated = day_exposures_served(opens, day, treated, state)
    out.add("exposures", pa.table({
        "user_id": pop.user_id.take(pa.array(e_user)),
        "exposed_at": to_arrow_ts(e_ts),
        "variant": _dict_strings(np.where(e_treated, 0, 1), ("treatment", "control")),
    }))

    tu = np.unique(opens.user[treated])
    state.treated_since[tu] = np.minimum(state.treated_since[tu], day)

    # whispers requests: one per treated open, plus prefetch top-ups in scenario windows
    rng = stream(seed, "requests", day)
    nat_ts = np.minimum(opens.ts[treated] + (rng.uniform(0.2, 1.5, int(treated.sum()))
                                             * US_PER_SECOND).astype(np.int64), end_us - 1)
    enabled = np.flatnonzero(served <= day)
    pre, added = prefetch_requests(day, scen, nat_ts, enabled, pop, mismatched,
                                   stream(seed, "prefetch", day))
    for key, count in added.items():
        i = int(key.split(":")[0])
        planted[i]["prefetch_requests"] = planted[i].get("prefetch_requests", 0) + count
    req = Requests(user=np.concatenate([opens.user[treated], pre.user]),
                   device_k=np.concatenate([opens.device_k[treated], pre.device_k]),
                   ts=np.concatenate([nat_ts, pre.ts]),
                   prefetch=np.concatenate([np.zeros(nat_ts.size, dtype=bool), pre.prefetch]))
    # rollback scenarios: after the flag flip only in-flight (and stale-CDN) requests are made
    keep, flip_counts = served_after_flip(req.ts, scen, stream(seed, "rollback", day))
    for i, counts in flip_counts.items():
        for key, count in counts.items():
            planted[i][key] = planted[i].get(key, 0) + count
    if not keep.all():
        req = Requests(user=req.user[keep], device_k=req.device_k[keep], ts=req.ts[keep],
                       prefetch=req.prefetch[keep])
    whispers_attributes(req, day, pop, scen, mismatched, params, stream(seed, "whispers_attr", day))
    other = other_requests(opens, params, stream(seed, "other_api", day))
    other.duration = np.where(other.endpoint == 0,  # the recap page waits for whispers
                              other.duration * recap_factor(other.ts, scen), other.duration)
    other.ts = np.minimum(other.ts, end_us - 1)

    # api_logs: number requests in time order
    n_w = len(req)
    api_ts = np.concatenate([req.ts, other.ts])
    order = np.argsort(api_ts, kind="stable")
    number = np.empty(api_ts.size, dtype=np.int64)
    number[order] = state.next_request + np.arange(api_ts.size)
    state.next_request += api_ts.size
    req_ids = format_ids("r", number[:n_w], REQUEST_ID_WIDTH)
    api_user = np.concatenate([req.user, other.user])
    api_dev = np.concatenate([req.device_k, other.device_k])
    is_w = np.arange(api_ts.size) < n_w
    widx = np.concatenate([req.weights_idx, np.zeros(other.ts.size, dtype=np.int64)])
    o = order
    out.add("api_logs", pa.table({
        "request_id": format_ids("r", number[o], REQUEST_ID_WIDTH),
        "timestamp": to_arrow_ts(api_ts[o]),
        "endpoint": _dict_strings(np.concatenate([np.zeros(n_w, np.int64), 1 + other.endpoint])[o],
                                  ENDPOINTS),
        "user_id": pop.user_id.take(pa.array(api_user[o])),
        "device_id": pop.device_ids(api_user[o], api_dev[o]),
        "status": pa.array(np.concatenate([req.status, other.status])[o].astype(np.int32)),
        "duration_ms": pa.array(np.round(np.concatenate([req.duration, other.duration])[o], 3)),
        "ranking_ms": pa.array(np.round(np.concatenate([req.ranking_ms, np.zeros(other.ts.size)])[o], 3),
                               mask=~is_w[o]),
        "weight_source": _dict_strings(WEIGHT_SOURCE_OF[widx[o]], WEIGHT_SOURCES, null=~is_w[o]),
        # fallback requests carry no user weights, hence no weights_version
        "weights_version": _dict_strings(widx[o], VERSIONS,
                                         null=~is_w[o] | (widx[o] == len(WEIGHTS_TABLE) - 1)),
    }))

    # rankings of successful natural requests
    ok = np.flatnonzero(~req.prefetch & (req.status < 400))
    phase_flags = plan.phase_for_day(max(day, 0)).flags
    scale = np.ones(ok.size)
    for s in active(scen, "ctr_drop"):
        scale[req.ts[ok] >= s.start_us] *= float(s.params["factor"])
    ok_ids = req_ids.take(pa.array(ok))
    rr = rank_requests(pop, req.user[ok], ok_ids, req.weights_idx[ok], WEIGHTS_TABLE, scale, params,
                       int(phase_flags["NEXT_PUBLIC_WHISPERS_MAX"]),
                       bool(phase_flags["NEXT_PUBLIC_WHISPERS_CONTEXT_RANKING"]),
                       stream(seed, "ranking", day))
    out.add("ranking_candidates", candidates_table(rr, ok_ids))

    # telemetry
    rng_t = stream(seed, "telemetry", day)
    shown = np.flatnonzero(rr.position > 0)
    s_req = ok[rr.row_req[shown]]
    s_ts = np.minimum(req.ts[s_req] + (req.duration[s_req] * 1000).astype(np.int64), end_us - 1)
    clicked = rr.clicked[shown]
    c_ts = np.minimum(s_ts[clicked] + (rng_t.lognormal(np.log(6.0), 1.0, int(clicked.sum()))
                                       * US_PER_SECOND).astype(np.int64), end_us - 1)
    cues = maya_cues(opens, treated, day, state, params, cooldown, scen, stream(seed, "cues", day), end_us)
    for i, s in enumerate(scen):
        if s.name == "cue_cooldown_violation" and s.day == day:
            planted[i]["users"] = int(cues.violation_users.size)
            planted[i]["user_ids_sample"] = pop.user_id.take(pa.array(cues.violation_users[:200])).to_pylist()
    ev_type = np.concatenate([np.zeros(len(opens), np.int64), np.full(shown.size, 1),
                              np.full(int(clicked.sum()), 2), np.full(cues.user.size, 3)])
    ev_ts = np.concatenate([opens.ts, s_ts, c_ts, cues.ts])
    ev_user = np.concatenate([opens.user, req.user[s_req], req.user[s_req][clicked], cues.user])
    ev_dev = np.concatenate([opens.device_k, req.device_k[s_req], req.device_k[s_req][clicked],
                             cues.device_k])
    has_req = ev_type == 1
    has_req |= ev_type == 2
    ev_req = np.concatenate([np.zeros(len(opens), np.int64), s_req, s_req[clicked],
                             np.zeros(cues.user.size, np.int64)])
    ev_mem = np.concatenate([np.zeros(len(opens), np.int64), rr.memory_number[shown],
                             rr.memory_number[shown][clicked], np.zeros(cues.user.size, np.int64)])
    ev_pos = np.concatenate([np.zeros(len(opens), np.int64), rr.position[shown],
                             rr.position[shown][clicked], np.zeros(cues.user.size, np.int64)])
    keep = np.ones(ev_ts.size, dtype=bool)
    for i, s in enumerate(scen):
        if s.name == "telemetry_gap":
            gap = s.covers(ev_ts)
            planted[i]["events_removed"] = planted[i].get("events_removed", 0) + int(gap.sum())
            keep &= ~gap
    o = np.flatnonzero(keep)
    o = o[np.argsort(ev_ts[o], kind="stable")]
    event_numbers = state.next_event + np.arange(o.size)
    state.next_event += o.size
    out.add("telemetry", pa.table({
        "event_id": format_ids("e", event_numbers, EVENT_ID_WIDTH),
        "created_at": to_arrow_ts(ev_ts[o]),
        "user_id": pop.user_id.take(pa.array(ev_user[o])),
        "device_id": pop.device_ids(ev_user[o], ev_dev[o]),
        "event_type": _dict_strings(ev_type[o], EVENT_TYPES),
        "request_id": _masked(_take_or_null(req_ids, ev_req[o], has_req[o]), ~has_req[o]),
        "whisper_id": _masked(memory_ids(ev_mem[o]), ~has_req[o]),
        "position": pa.array(ev_pos[o].astype(np.int32), mask=~has_req[o]),
    }))

    # feedback and tickets
    fb = feedback(opens, treated, day, params, scen, stream(seed, "feedback", day), end_us)
    out.add("feedback", pa.table({
        "user_id": pop.user_id.take(pa.array(fb.user)),
        "submitted_at": to_arrow_ts(fb.ts),
        "rating": pa.array(fb.rating.astype(np.int32)),
        "relevant": pa.array(fb.relevant == 1.0, mask=np.isnan(fb.relevant)),
    }))
    tk = tickets(day, pop.n, cal.day_start_us(day), served, params, scen,
                 stream(seed, "tickets", day),
                 params.diurnal_weekend if cal.is_weekend(day) else params.diurnal_weekday)
    ticket_numbers = state.next_ticket + np.arange(tk.user.size)
    state.next_ticket += tk.user.size
    ticket_ids = format_ids("t", ticket_numbers, TICKET_ID_WIDTH)
    for i, (u, offset) in tk.planted.items():
        planted[i]["ticket_ids"] = ticket_ids.slice(offset, len(u)).to_pylist()
        planted[i]["user_ids"] = pop.user_id.take(pa.array(u)).to_pylist()
    anon = tk.user < 0
    out.add("support_tickets", pa.table({
        "ticket_id": ticket_ids,
        "created_at": to_arrow_ts(tk.ts),
        "user_id": _masked(pop.user_id.take(pa.array(np.maximum(tk.user, 0))), anon),
        "category": _dict_strings(tk.category, CATEGORIES),
        "priority": _dict_strings(tk.priority, PRIORITIES),
        "about_whispers": pa.array(tk.about_whispers),
    }))


def _take_or_null(values: pa.Array, index: np.ndarray, valid: np.ndarray) -> pa.Array:
    """``values[index]`` where ``valid``, anything (later masked) elsewhere."""
    if len(values) == 0:
        return pa.nulls(index.size, pa.string())
    return values.take(pa.array(np.where(valid, index, 0)))


def _masked(values: pa.Array, null: np.ndarray) -> pa.Array:
    """``values`` with NULL where ``null`` is True."""
    if not null.any():
        return values
    import pyarrow.compute as pc

    return pc.if_else(pa.array(null), pa.nulls(len(values), values.type), values)
