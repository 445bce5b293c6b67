"""Deterministic cohort assignment: the production rule, reproduced exactly for the analysis.

Every user gets a bucket in ``[0, buckets)`` from a language-neutral hash, so the app (TypeScript),
the simulator and the analysis agree on who sees whispers on which rollout day::

    bucket(user_id) = fmix32(fnv1a32(utf8(salt + ":" + user_id))) mod buckets

``fnv1a32`` is 32-bit FNV-1a (offset basis 2166136261, prime 16777619) and ``fmix32`` is the
MurmurHash3 32-bit finaliser; all arithmetic is modulo 2**32. FNV-1a alone mixes its last bytes
poorly (sequential ids such as ``user_000001`` would crowd into neighbouring buckets); the
finaliser spreads them. See ``docs/cohort.md`` for a TypeScript version and the test vectors.

Who is enabled on rollout day ``d`` (thresholds all come from the :class:`~whispers_lab.plan.Plan`):

* internal users (``is_internal``): treatment from day 0, always; excluded from the analysis;
* holdout: external users with ``bucket >= buckets - holdout_buckets``, never enabled;
* beta, from ``plan.beta_first_day()`` on: the ``plan.beta.max_users`` most engaged external,
  non-holdout users with more than ``plan.beta.min_micro_memories`` micro-memories; they stay
  enabled afterwards;
* percentage stages: an external, non-holdout user is enabled iff
  ``bucket < round(p * (buckets - holdout_buckets) / 100)`` with ``p = plan.percentage_on(d)``.
  Thresholds only grow, so a user once enabled stays enabled.

Everything here is vectorised over numpy / pandas; the hash loops over byte *positions*, never over
users, so ten million ids take a few seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from .contract import EXPOSURES, USERS, VARIANTS
from .errors import WhispersLabError
from .plan import Plan

if TYPE_CHECKING:
    from .state import RolloutState

# -- constants ---------------------------------------------------------------------------------

FNV_OFFSET: int = 2166136261  # 0x811c9dc5, the 32-bit FNV offset basis
FNV_PRIME: int = 16777619  # 0x01000193, the 32-bit FNV prime
FMIX_C1: int = 0x85EBCA6B
FMIX_C2: int = 0xC2B2AE35
MASK32: int = 0xFFFFFFFF
SEPARATOR: str = ":"
DEFAULT_BUCKETS: int = 10000

#: Why a user has the variant it has on a day. The first three mean treatment.
REASONS: tuple[str, ...] = ("internal", "beta", "percentage", "holdout", "not_eligible")
TREATMENT_REASONS: frozenset[str] = frozenset({"internal", "beta", "percentage"})
#: Reasons whose users are never analysed (they are not randomised).
EXCLUDED_REASONS: frozenset[str] = frozenset({"internal", "beta"})

#: Contract columns of ``users`` the assignment reads (``signup_at`` plays no part).
USER_ID = USERS.column("user_id").name
IS_INTERNAL = USERS.column("is_internal").name
MICRO_MEMORY_COUNT = USERS.column("micro_memory_count").name
ENGAGEMENT_SCORE = USERS.column("engagement_score").name
ASSIGNMENT_COLUMNS: tuple[str, ...] = (USER_ID, IS_INTERNAL, MICRO_MEMORY_COUNT, ENGAGEMENT_SCORE)

TREATMENT, CONTROL = VARIANTS  # ("treatment", "control")

# Category codes shared by assign() and first_enabled_day() (not public).
_INTERNAL, _BETA, _BUCKETED, _HOLDOUT = 0, 1, 2, 3
_REASON_CODE = {r: i for i, r in enumerate(REASONS)}


class CohortError(WhispersLabError):
    """Input the assignment cannot use (missing column, wrong type, null ids, bad selection).

    The message names the source (a file, or ``users`` for a frame) and the column.
    """


# -- the hash: scalar reference ------------------------------------------------------------------


def fnv1a32(data: bytes, h: int = FNV_OFFSET) -> int:
    """32-bit FNV-1a of ``data``, continuing from state ``h`` (the offset basis by default)."""
    for byte in data:
        h ^= byte
        h = (h * FNV_PRIME) & MASK32
    return h


def fmix32(h: int) -> int:
    """MurmurHash3's 32-bit finaliser: an invertible avalanche of all 32 bits."""
    h &= MASK32
    h ^= h >> 16
    h = (h * FMIX_C1) & MASK32
    h ^= h >> 13
    h = (h * FMIX_C2) & MASK32
    h ^= h >> 16
    return h


def hash_key(user_id: str, salt: str) -> bytes:
    """The bytes that are hashed: UTF-8 of ``salt + ":" + user_id`` (no Unicode normalisation)."""
    return (salt + SEPARATOR + user_id).encode("utf-8")


def bucket_of_one(user_id: str, salt: str, buckets: int = DEFAULT_BUCKETS) -> int:
    """Bucket of one id, written plainly. The reference that :func:`bucket_of` is checked against."""
    return fmix32(fnv1a32(hash_key(user_id, salt))) % buckets


# -- the hash: vectorised ---------------------------------------------------------------------------


def _as_arrow_strings(user_ids: Any) -> list[pa.Array]:
    """``user_ids`` as a list of Arrow string arrays (one per chunk), UTF-8 encoded by Arrow."""
    if isinstance(user_ids, pd.Series | pd.Index):
        user_ids = user_ids.array
    try:
        if isinstance(user_ids, pa.ChunkedArray | pa.Array):
            arr = user_ids
        elif isinstance(user_ids, np.ndarray | pd.api.extensions.ExtensionArray):
            arr = pa.array(user_ids, from_pandas=True)
        else:
            arr = pa.array(list(user_ids), type=pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeEncodeError) as exc:
        raise CohortError(f"user ids must be strings (valid Unicode): {exc}") from None
    chunks = arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]
    out = []
    for chunk in chunks:
        t = chunk.type
        if pa.types.is_dictionary(t):
            chunk, t = chunk.dictionary_decode(), t.value_type
        if pa.types.is_string_view(t):
            chunk, t = chunk.cast(pa.large_string()), pa.large_string()
        if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
            raise CohortError(f"user ids must be strings, got Arrow type {t}")
        if chunk.null_count:
            raise CohortError(f"user ids contain {chunk.null_count} missing (null) value(s)")
        out.append(chunk)
    return out


#: Below this many ids still running, :func:`_fnv_continue` finishes them one by one.
_TAIL_IDS = 16


def _fnv_continue(offsets: np.ndarray, data: np.ndarray, seed: int) -> np.ndarray:
    """FNV-1a over each string ``data[offsets[i]:offsets[i+1]]``, starting from state ``seed``.

    Loops over byte positions. Strings are ordered by descending length once (a radix sort on the
    lengths), so at position ``j`` the strings still running form a prefix and the work is the
    total number of bytes, whatever the mix of lengths.
    """
    n = len(offsets) - 1
    h = np.full(n, seed, dtype=np.uint32)
    if n == 0:
        return h
    starts = offsets[:-1]
    lengths = np.diff(offsets)
    max_len = int(lengths.max())
    prime = np.uint32(FNV_PRIME)
    if max_len == 0:
        return h
    if int(lengths.min()) == max_len:  # fixed width: no sorting, no masking
        idx = starts.astype(np.int64, copy=True)
        byte = np.empty(n, dtype=np.uint8)
        for _ in range(max_len):
            np.take(data, idx, out=byte)
            h ^= byte
            h *= prime
            idx += 1
        return h
    small = max_len < 2**16
    key = (max_len - lengths).astype(np.uint16 if small else np.int64)  # descending length
    order = np.argsort(key, kind="stable")  # radix sort for uint16
    still_running = n - np.cumsum(np.bincount(lengths, minlength=max_len + 1))  # count(len > j)
    idx = starts[order].astype(np.int64)
    ends = (starts + lengths)[order].astype(np.int64)
    hs = np.full(n, seed, dtype=np.uint32)
    byte = np.empty(n, dtype=np.uint8)
    for j in range(max_len):
        k = int(still_running[j])
        if k <= _TAIL_IDS:
            # a few ids run on (e.g. one 1 MB id): a numpy call per byte position costs far
            # more than finishing each of them with the scalar loop (5 s against 0.08 s per MB)
            for i in range(k):
                hs[i] = fnv1a32(data[idx[i]:ends[i]].tobytes(), int(hs[i]))
            break
        np.take(data, idx[:k], out=byte[:k])
        hk = hs[:k]
        hk ^= byte[:k]
        hk *= prime
        idx[:k] += 1
    h[order] = hs
    return h


def _fmix32_array(h: np.ndarray) -> np.ndarray:
    h = h.astype(np.uint32, copy=True)
    h ^= h >> np.uint32(16)
    h *= np.uint32(FMIX_C1)
    h ^= h >> np.uint32(13)
    h *= np.uint32(FMIX_C2)
    h ^= h >> np.uint32(16)
    return h


def hash_of(user_ids: Any, salt: str) -> np.ndarray:
    """``fmix32(fnv1a32(utf8(salt + ":" + user_id)))`` for every id, as ``uint32``.

    ``user_ids``: a pandas Series / Index, numpy array, Arrow (chunked) array or any iterable of
    ``str``. The salt prefix is hashed once; FNV-1a then continues over each id's UTF-8 bytes,
    read straight from the Arrow buffers (no per-user Python objects).
    """
    seed = fnv1a32((salt + SEPARATOR).encode("utf-8"))
    parts = []
    for chunk in _as_arrow_strings(user_ids):
        if len(chunk) == 0:
            continue
        buffers = chunk.buffers()
        off_type = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
        offsets = np.frombuffer(buffers[1], dtype=off_type)[chunk.offset: chunk.offset + len(chunk) + 1]
        data = (np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None
                else np.zeros(0, dtype=np.uint8))
        parts.append(_fmix32_array(_fnv_continue(offsets.astype(np.int64), data, seed)))
    if not parts:
        return np.zeros(0, dtype=np.uint32)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def bucket_of(user_ids: Any, salt: str, buckets: int = DEFAULT_BUCKETS) -> np.ndarray:
    """Bucket in ``[0, buckets)`` of every id, as ``int32`` (vectorised :func:`bucket_of_one`)."""
    if not 1 <= buckets <= 2**31 - 1:
        raise ValueError(f"buckets must be in [1, 2**31 - 1], got {buckets}")
    return (hash_of(user_ids, salt) % np.uint32(buckets)).astype(np.int32)


# -- thresholds from the plan ---------------------------------------------------------------------


def holdout_start(plan: Plan) -> int:
    """First holdout bucket: buckets ``>= holdout_start(plan)`` never get whispers."""
    return plan.assignment.buckets - plan.assignment.holdout_buckets


def stage_threshold(percentage: float, plan: Plan) -> int:
    """Bucket threshold of a percentage stage: ``round(p * (buckets - holdout_buckets) / 100)``.

    Multiplying before dividing keeps whole percentages exact; ``round`` is Python's (half to
    even), which only matters for a stage landing on exactly half a bucket.
    """
    eligible = holdout_start(plan)
    return round(float(percentage) * eligible / 100.0)


def threshold_on(day: int, plan: Plan) -> int:
    """Buckets ``< threshold_on(day)`` of external non-holdout users are enabled on ``day``.

    Raises :class:`~whispers_lab.errors.PlanError` for a day before the rollout start.
    """
    return stage_threshold(plan.phase_for_day(day).percentage, plan)


# -- checking the users frame ------------------------------------------------------------------------


def check_users(users: pd.DataFrame, source: str = "users") -> None:
    """Raise :class:`CohortError` unless ``users`` has the assignment columns with usable types.

    Checks presence, dtype and missing values of the four columns the assignment reads. It does
    not check uniqueness of ``user_id`` (the contract validation does; it costs seconds at 10M).
    """
    missing = [c for c in ASSIGNMENT_COLUMNS if c not in users.columns]
    if missing:
        raise CohortError(f"{source}: missing column {missing[0]!r} "
                          f"(the assignment needs {', '.join(ASSIGNMENT_COLUMNS)})")
    uid = users[USER_ID]
    if not (pd.api.types.is_string_dtype(uid.dtype) or uid.dtype == object):
        raise CohortError(f"{source}: column {USER_ID!r} must hold strings, got {uid.dtype}")
    n_null = int(uid.isna().sum())
    if n_null:
        raise CohortError(f"{source}: column {USER_ID!r} has {n_null} missing value(s)")
    col = users[IS_INTERNAL]
    if not pd.api.types.is_bool_dtype(col.dtype):
        raise CohortError(f"{source}: column {IS_INTERNAL!r} must be boolean, got {col.dtype}")
    if col.isna().any():
        raise CohortError(f"{source}: column {IS_INTERNAL!r} has {int(col.isna().sum())} missing value(s)")
    col = users[MICRO_MEMORY_COUNT]
    if not pd.api.types.is_integer_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype):
        raise CohortError(f"{source}: column {MICRO_MEMORY_COUNT!r} must be an integer, got {col.dtype}")
    if col.isna().any():
        raise CohortError(f"{source}: column {MICRO_MEMORY_COUNT!r} has "
                          f"{int(col.isna().sum())} missing value(s)")
    col = users[ENGAGEMENT_SCORE]
    if not pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype):
        raise CohortError(f"{source}: column {ENGAGEMENT_SCORE!r} must be a number, got {col.dtype}")
    values = col.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = int((~np.isfinite(values)).sum())
    if bad:
        raise CohortError(f"{source}: column {ENGAGEMENT_SCORE!r} has {bad} missing or "
                          f"non-finite value(s)")


# -- beta -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BetaSelection:
    """The beta cohort: never an exception, a shortfall is a flag with a sentence.

    ``user_ids`` are in rank order (most engaged first). ``qualified`` counts every external,
    non-holdout user with enough micro-memories, before the cap at ``max_users``.
    """

    user_ids: tuple[str, ...]
    qualified: int
    min_users: int
    max_users: int
    min_micro_memories: int
    first_day: int | None
    shortfall: bool
    sentence: str

    @property
    def count(self) -> int:
        return len(self.user_ids)


def _select_beta_positions(users: pd.DataFrame, bucket: np.ndarray, plan: Plan
                           ) -> tuple[np.ndarray, int]:
    """Row positions of the beta users in rank order, and the number who qualified."""
    if plan.beta_first_day() is None:
        return np.zeros(0, dtype=np.int64), 0
    internal = users[IS_INTERNAL].to_numpy(dtype=bool)
    memories = users[MICRO_MEMORY_COUNT].to_numpy(dtype=np.int64)
    qualifies = (~internal) & (bucket < holdout_start(plan)) & (memories > plan.beta.min_micro_memories)
    cand = np.flatnonzero(qualifies)
    k = plan.beta.max_users
    if len(cand) == 0:
        return cand, 0
    engagement = users[ENGAGEMENT_SCORE].to_numpy(dtype=np.float64)[cand]
    if len(cand) > k:
        # Keep everyone at least as engaged as the k-th best (ties included), then sort those.
        kth = np.partition(-engagement, k - 1)[k - 1]
        keep = -engagement <= kth
        cand, engagement = cand[keep], engagement[keep]
    ids = users[USER_ID].iloc[cand].to_numpy(dtype=object).astype(str)  # few rows unless ties
    order = np.lexsort((ids, bucket[cand], -engagement))  # last key sorts first
    return cand[order][:k], int(qualifies.sum())


def _beta_selection(users: pd.DataFrame, positions: np.ndarray, qualified: int, plan: Plan
                    ) -> BetaSelection:
    ids = tuple(str(x) for x in users[USER_ID].iloc[positions])
    b = plan.beta
    first = plan.beta_first_day()
    shortfall = first is not None and len(ids) < b.min_users
    if first is None:
        sentence = "The plan has no beta phase; no beta users."
    elif shortfall:
        sentence = (f"Beta shortfall: only {len(ids)} external, non-holdout user(s) have more than "
                    f"{b.min_micro_memories} micro-memories; the plan asks for {b.min_users}-"
                    f"{b.max_users}; {'all of them are' if ids else 'nobody is'} enabled from day {first}.")
    else:
        sentence = (f"{len(ids)} beta user(s) enabled from day {first}: the most engaged of "
                    f"{qualified} external, non-holdout user(s) with more than "
                    f"{b.min_micro_memories} micro-memories (plan: {b.min_users}-{b.max_users}).")
    return BetaSelection(user_ids=ids, qualified=qualified, min_users=b.min_users,
                         max_users=b.max_users, min_micro_memories=b.min_micro_memories,
                         first_day=first, shortfall=shortfall, sentence=sentence)


def select_beta(users: pd.DataFrame, plan: Plan) -> BetaSelection:
    """The beta cohort of the plan's rule, chosen from the whole ``users`` table.

    External, non-holdout users with ``micro_memory_count > plan.beta.min_micro_memories``, most
    engaged first (``engagement_score`` descending, ties by bucket then ``user_id`` in Unicode
    code-point order, which is also UTF-8 byte order), at most
    ``plan.beta.max_users``. Fewer than ``plan.beta.min_users`` is reported as a shortfall.
    The choice depends on the whole table: compute it once on the full ``users`` and pass it to
    :func:`assign` when assigning a subset.
    """
    check_users(users)
    bucket = bucket_of(users[USER_ID], plan.assignment.salt, plan.assignment.buckets)
    positions, qualified = _select_beta_positions(users, bucket, plan)
    return _beta_selection(users, positions, qualified, plan)


# -- assignment ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Arrays:
    bucket: np.ndarray  # int32
    category: np.ndarray  # int8: _INTERNAL, _BETA, _BUCKETED, _HOLDOUT
    first_day: np.ndarray  # float64, np.inf = never
    beta: BetaSelection


def _stage_days_and_thresholds(plan: Plan) -> tuple[np.ndarray, np.ndarray]:
    stages = plan.percentage_stages()
    days = np.array([d for d, _ in stages], dtype=np.float64)
    thresholds = np.array([stage_threshold(p, plan) for _, p in stages], dtype=np.int64)
    # The plan validates monotone percentages; keep the thresholds monotone regardless.
    return days, np.maximum.accumulate(thresholds) if len(thresholds) else thresholds


def _arrays(users: pd.DataFrame, plan: Plan, beta: BetaSelection | None) -> _Arrays:
    check_users(users)
    a = plan.assignment
    bucket = bucket_of(users[USER_ID], a.salt, a.buckets)
    internal = users[IS_INTERNAL].to_numpy(dtype=bool)
    holdout = (~internal) & (bucket >= holdout_start(plan))

    if beta is None:
        positions, qualified = _select_beta_positions(users, bucket, plan)
        beta = _beta_selection(users, positions, qualified, plan)
        is_beta = np.zeros(len(users), dtype=bool)
        is_beta[positions] = True
    else:
        is_beta = users[USER_ID].isin(list(beta.user_ids)).to_numpy(dtype=bool)
        wrong = is_beta & (internal | holdout)
        if wrong.any():
            raise CohortError(f"beta selection: {int(wrong.sum())} selected user(s) are internal or "
                              f"in the holdout; select_beta() never picks those")

    category = np.full(len(users), _BUCKETED, dtype=np.int8)
    category[holdout] = _HOLDOUT
    category[is_beta] = _BETA
    category[internal] = _INTERNAL

    # Bucket-assigned users: the first stage whose threshold admits their bucket.
    days, thresholds = _stage_days_and_thresholds(plan)
    stage = np.searchsorted(thresholds, bucket, side="right")  # first stage with threshold > bucket
    padded = np.append(days, np.inf)
    first_day = padded[stage]
    first_day[category == _HOLDOUT] = np.inf
    beta_day = plan.beta_first_day()
    if beta_day is not None:
        first_day[category == _BETA] = np.minimum(first_day[category == _BETA], float(beta_day))
    first_day[category == _INTERNAL] = 0.0
    return _Arrays(bucket=bucket, category=category, first_day=first_day, beta=beta)


#: Assignment categories of :func:`categories` (who a stage enables, whatever the day).
CATEGORY_INTERNAL, CATEGORY_BETA, CATEGORY_BUCKETED, CATEGORY_HOLDOUT = (
    _INTERNAL, _BETA, _BUCKETED, _HOLDOUT)
CATEGORY_NAMES: tuple[str, ...] = ("internal", "beta", "bucketed", "holdout")


def categories(users: pd.DataFrame, plan: Plan, *, beta: BetaSelection | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bucket, category, first enabled day) of every user, hashing once: the category
    (:data:`CATEGORY_NAMES` index) says which audience enables the user (internal team, beta,
    percentage by bucket, never); the day is :func:`first_enabled_day`'s."""
    arr = _arrays(users, plan, beta)
    return arr.bucket, arr.category, arr.first_day


def first_enabled_day(users: pd.DataFrame, plan: Plan, *, beta: BetaSelection | None = None
                      ) -> np.ndarray:
    """Rollout day each user is first enabled (``float64``; ``np.inf`` = never).

    Internal users 0, beta users ``plan.beta_first_day()``, bucket-assigned users the first
    percentage stage whose threshold admits their bucket, holdout users ``np.inf``. A user has
    treatment on day ``d`` iff ``first_enabled_day <= d``; the retention analysis uses it to
    censor control users switched on later, the simulator to emit exposures.
    """
    return _arrays(users, plan, beta).first_day


def assign(users: pd.DataFrame, day: int, plan: Plan, *, beta: BetaSelection | None = None,
           state: RolloutState | None = None) -> pd.DataFrame:
    """The intended variant of every user on rollout ``day``.

    ``state``: the rollout's actual state (:mod:`whispers_lab.state`); then the variant is what
    the stage actually in force at the end of ``day`` serves (after a hold the held stage, after
    a rollback nobody), ``first_enabled_day`` the first day the state enabled the user
    (intention to treat: a rollback does not undo it), and ``reason`` says ``internal`` /
    ``beta`` for those users whatever the stage (they are never randomised). Without it: the
    plan's calendar.

    ``users`` has the contract ``users`` columns (``signup_at`` is not needed). Returns one row per
    user, in input order: ``user_id``, ``bucket`` (int32), ``variant`` and ``reason``
    (categoricals over :data:`~whispers_lab.contract.VARIANTS` and :data:`REASONS`) and
    ``first_enabled_day`` (float64, inf = never). Internal and beta users are treatment but not
    randomised: analyses drop ``reason in EXCLUDED_REASONS``.

    ``beta``: a selection from :func:`select_beta` on the full table, when ``users`` is a subset
    (the beta cohort is a property of the whole population). Raises
    :class:`~whispers_lab.errors.PlanError` for a day before the rollout start.
    """
    plan.phase_for_day(day)  # PlanError for day < 0
    if state is not None:
        return _assign_by_state(users, day, state, beta)
    arr = _arrays(users, plan, beta)
    enabled = arr.first_day <= day
    reason = np.full(len(users), _REASON_CODE["not_eligible"], dtype=np.int8)
    reason[enabled & (arr.category == _BUCKETED)] = _REASON_CODE["percentage"]
    reason[enabled & (arr.category == _BETA)] = _REASON_CODE["beta"]
    reason[arr.category == _HOLDOUT] = _REASON_CODE["holdout"]
    reason[arr.category == _INTERNAL] = _REASON_CODE["internal"]
    variant = np.where(enabled, 0, 1).astype(np.int8)  # index into VARIANTS
    out = pd.DataFrame({
        USER_ID: users[USER_ID].reset_index(drop=True),
        "bucket": arr.bucket,
        "variant": pd.Categorical.from_codes(variant, categories=list(VARIANTS)),
        "reason": pd.Categorical.from_codes(reason, categories=list(REASONS)),
        "first_enabled_day": arr.first_day,
    })
    out.attrs["beta"] = arr.beta
    out.attrs["day"] = int(day)
    return out


def _assign_by_state(users: pd.DataFrame, day: int, state: RolloutState,
                     beta: BetaSelection | None) -> pd.DataFrame:
    arr = _arrays(users, state.dated_plan(), beta)
    on = np.zeros(len(users), dtype=bool)
    on[arr.category == _INTERNAL] = state.internal_on(day)
    on[arr.category == _BETA] = state.beta_on(day)
    bucketed = arr.category == _BUCKETED
    on[bucketed] = arr.bucket[bucketed] < state.threshold_on(day)
    reason = np.full(len(users), _REASON_CODE["not_eligible"], dtype=np.int8)
    reason[on & bucketed] = _REASON_CODE["percentage"]
    beta_on = (arr.category == _BETA) & ((arr.first_day <= day) | on)
    reason[beta_on] = _REASON_CODE["beta"]
    reason[(arr.category == _BETA) & ~beta_on & on] = _REASON_CODE["percentage"]
    reason[arr.category == _HOLDOUT] = _REASON_CODE["holdout"]
    reason[arr.category == _INTERNAL] = _REASON_CODE["internal"]
    out = pd.DataFrame({
        USER_ID: users[USER_ID].reset_index(drop=True),
        "bucket": arr.bucket,
        "variant": pd.Categorical.from_codes(np.where(on, 0, 1).astype(np.int8),
                                             categories=list(VARIANTS)),
        "reason": pd.Categorical.from_codes(reason, categories=list(REASONS)),
        "first_enabled_day": arr.first_day,
    })
    out.attrs["beta"] = arr.beta
    out.attrs["day"] = int(day)
    out.attrs["state"] = state.source
    return out


# -- expected split (sample-ratio checks) ------------------------------------------------------------


@dataclass(frozen=True)
class ExpectedSplit:
    """Expected treatment / control shares among external users assigned by bucket on one day.

    The population is every external user outside the beta cohort, holdout included: its
    treatment share is ``threshold / buckets``. Internal and beta users are not randomised and
    must be left out of the observed counts too.
    """

    day: int
    phase_id: str
    percentage: float
    threshold: int
    buckets: int
    holdout_buckets: int
    treatment_share: float
    control_share: float
    holdout_share: float
    sentence: str


def expected_split(day: int, plan: Plan, state: RolloutState | None = None) -> ExpectedSplit:
    """The split a sample-ratio check compares against (raises PlanError for ``day < 0``):
    the stage the plan's calendar has on ``day``, or with ``state`` the stage actually in force
    at the end of ``day`` (a held stage, nobody after a rollback)."""
    phase = plan.phase_for_day(day)
    a = plan.assignment
    if state is not None:
        phase = state.phase_on(day)
        stage = state.stage_on(day)
        threshold = state.threshold_on(day)
        pct = 0.0 if stage.off else float(stage.percentage)
        phase = replace(phase, percentage=pct, name=phase.name + (
            " (rolled back: whispers off)" if stage.off else ""))
    else:
        threshold = stage_threshold(phase.percentage, plan)
    treatment = threshold / a.buckets
    control = 1.0 - treatment
    holdout_share = a.holdout_buckets / a.buckets
    population = ("external users assigned by bucket (internal and beta users excluded; holdout "
                  "users included, as control)")
    if threshold == 0:
        sentence = (f"On day {day} ({phase.name}) no user is enabled by bucket: the expected "
                    f"treatment share among {population} is 0, so a sample-ratio check has "
                    f"nothing to test.")
    else:
        sentence = (f"On day {day} ({phase.name}, {phase.percentage:g}% of non-holdout users) the "
                    f"expected split among {population} is {treatment:.2%} treatment / "
                    f"{control:.2%} control (buckets < {threshold} of {a.buckets}; "
                    f"{holdout_share:.2%} are holdout).")
    return ExpectedSplit(day=day, phase_id=phase.id, percentage=float(phase.percentage),
                         threshold=threshold, buckets=a.buckets, holdout_buckets=a.holdout_buckets,
                         treatment_share=treatment, control_share=control,
                         holdout_share=holdout_share, sentence=sentence)


# -- served vs intended ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MismatchReport:
    """Users whose latest served variant differs from the intended one."""

    compared: int
    served_treatment_intended_control: int
    served_control_intended_treatment: int
    unknown_users: int
    mismatch_rate: float | None
    sentence: str
    by_intended_reason: Mapping[str, int] = field(default_factory=dict)

    @property
    def mismatched(self) -> int:
        return self.served_treatment_intended_control + self.served_control_intended_treatment


def served_mismatch(exposures: pd.DataFrame, intended: pd.DataFrame) -> MismatchReport:
    """Compare what production served with what :func:`assign` intended for the same day.

    ``exposures``: contract columns ``user_id, exposed_at, variant``, already filtered by the
    caller to rows up to the end of the analysis day; each user's latest row counts.
    ``intended``: the frame of :func:`assign` (``user_id``, ``variant``, optionally ``reason``).
    Exposed users absent from ``intended`` are counted as unknown, not compared.
    """
    cols = EXPOSURES.column_names
    for name, frame, needed in (("exposures", exposures, cols),
                                ("intended", intended, (USER_ID, "variant"))):
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise CohortError(f"{name}: missing column {missing[0]!r}")
    served = exposures[list(cols)]
    bad = ~served["variant"].isin(VARIANTS)
    if bad.any():
        raise CohortError(f"exposures: column 'variant' has {int(bad.sum())} value(s) outside "
                          f"{VARIANTS}, e.g. {served.loc[bad, 'variant'].iloc[0]!r}")
    # Latest row per user; a tie on exposed_at (a contract breach) resolves by variant, deterministically.
    latest = (served.sort_values(["exposed_at", "variant"], kind="stable")
              .drop_duplicates(USER_ID, keep="last"))
    keep = [USER_ID, "variant"] + (["reason"] if "reason" in intended.columns else [])
    try:
        merged = latest.merge(intended[keep], on=USER_ID, how="left",
                              suffixes=("_served", "_intended"), validate="one_to_one")
    except pd.errors.MergeError:
        raise CohortError("intended: column 'user_id' repeats a user") from None
    served_v = merged["variant_served"].astype(str).to_numpy()
    intended_v = merged["variant_intended"]
    known = intended_v.notna().to_numpy()
    intended_s = intended_v.astype(object).to_numpy()
    t_c = known & (served_v == TREATMENT) & (intended_s == CONTROL)
    c_t = known & (served_v == CONTROL) & (intended_s == TREATMENT)
    compared = int(known.sum())
    unknown = int((~known).sum())
    mismatched = int(t_c.sum() + c_t.sum())
    rate = mismatched / compared if compared else None
    by_reason: dict[str, int] = {}
    if "reason" in merged.columns and mismatched:
        counts = merged.loc[t_c | c_t, "reason"].astype(str).value_counts()
        by_reason = {str(k): int(v) for k, v in counts.items()}
    if compared == 0:
        sentence = ("No exposed user could be compared: "
                    + (f"all {unknown} exposed user(s) are unknown to users." if unknown
                       else "there are no exposures."))
    else:
        sentence = (f"Of {compared:,} exposed user(s) known to users, {mismatched:,} "
                    f"({rate:.3%}) were last served a variant other than intended: "
                    f"{int(t_c.sum()):,} served treatment but intended control, "
                    f"{int(c_t.sum()):,} served control but intended treatment.")
        if unknown:
            sentence += f" {unknown:,} exposed user(s) are unknown to users."
    return MismatchReport(compared=compared, served_treatment_intended_control=int(t_c.sum()),
                          served_control_intended_treatment=int(c_t.sum()), unknown_users=unknown,
                          mismatch_rate=rate, sentence=sentence, by_intended_reason=by_reason)


def reason_counts(assigned: pd.DataFrame) -> dict[str, int]:
    """Users per reason (every reason listed, zeros included), for summaries without user ids."""
    counts = pd.Series(assigned["reason"]).astype(str).value_counts()
    return {r: int(counts.get(r, 0)) for r in REASONS}


__all__ = [
    "ASSIGNMENT_COLUMNS",
    "CATEGORY_NAMES",
    "EXCLUDED_REASONS",
    "FNV_OFFSET",
    "FNV_PRIME",
    "REASONS",
    "TREATMENT_REASONS",
    "BetaSelection",
    "CohortError",
    "ExpectedSplit",
    "MismatchReport",
    "assign",
    "bucket_of",
    "bucket_of_one",
    "categories",
    "check_users",
    "expected_split",
    "first_enabled_day",
    "fmix32",
    "fnv1a32",
    "hash_key",
    "hash_of",
    "holdout_start",
    "reason_counts",
    "select_beta",
    "served_mismatch",
    "stage_threshold",
    "threshold_on",
]
