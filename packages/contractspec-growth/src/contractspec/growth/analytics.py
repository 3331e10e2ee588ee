"""Growth analytics on event and purchase streams: funnels, cohorts, churn and experiment ideas.

Everything here is plain NumPy over columnar data, so the 69,659 purchases of the CDNOW data set
(`load_cdnow`) are analysed in milliseconds:

* [`FunnelAnalyzer`][contractspec.growth.analytics.FunnelAnalyzer]: ordered-step conversion and
  drop-off within a time window after entering the funnel.
* [`CohortTracker`][contractspec.growth.analytics.CohortTracker]: monthly acquisition cohorts,
  their retention matrix and cumulative lifetime value (LTV) per customer.
* [`ChurnPredictor`][contractspec.growth.analytics.ChurnPredictor]: recency / frequency / error
  scoring, monotone by construction (a recent, frequent, error-free user scores low risk), with
  weights learnt from labelled history.
* [`GrowthHypothesisGenerator`][contractspec.growth.analytics.GrowthHypothesisGenerator]: turns
  metric trends and anomalies into ranked experiment ideas.

Result tables convert to pandas with `to_frame()` (extra `contractspec-growth[pandas]`).
"""

from __future__ import annotations

import bisect
import datetime as dt
import html
import itertools
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import attrs
import numpy as np
import numpy.typing as npt
from scipy import optimize, special
from scipy import stats as sps

from contractspec.core.errors import ConfigurationError, SpecValidationError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd

__all__ = [
    "CDNOW_DOWNLOAD_URL",
    "ActivityProfile",
    "ChurnPredictor",
    "ChurnScore",
    "CohortTable",
    "CohortTracker",
    "ExperimentIdea",
    "FunnelAnalyzer",
    "FunnelResult",
    "GrowthHypothesisGenerator",
    "MetricSeries",
    "Transactions",
    "load_cdnow",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_DAY = np.timedelta64(1, "D")


def _require_pandas(what: str) -> Any:
    try:
        import pandas as pd
    except ImportError as exc:
        raise ImportError(
            f"{what} needs pandas: pip install 'contractspec-growth[pandas]'"
        ) from exc
    return pd


def _as_datetime64(values: Iterable[Any] | npt.ArrayLike, field: str) -> npt.NDArray[np.datetime64]:
    """Convert dates/datetimes (or datetime64) to `datetime64[s]`, naive UTC."""
    if isinstance(values, np.ndarray) and np.issubdtype(values.dtype, np.datetime64):
        return values.astype("datetime64[s]")
    out: list[np.datetime64] = []
    for i, v in enumerate(values):  # type: ignore[arg-type]
        if isinstance(v, dt.datetime):
            if v.tzinfo is not None:
                v = v.astimezone(dt.UTC).replace(tzinfo=None)
            out.append(np.datetime64(v, "s"))
        elif isinstance(v, dt.date):
            out.append(np.datetime64(v, "s"))
        elif isinstance(v, np.datetime64):
            out.append(v.astype("datetime64[s]"))
        else:
            raise SpecValidationError(
                f"{field}[{i}] must be a date or datetime, got {type(v).__name__} {v!r}.",
                details={"field": field, "index": i},
            )
    return np.array(out, dtype="datetime64[s]")


def _month_index(times: npt.NDArray[np.datetime64]) -> IntArray:
    """Months since 1970-01 of each timestamp."""
    return times.astype("datetime64[M]").astype(np.int64)


def _month_label(index: int) -> str:
    return str(np.datetime64(int(index), "M"))


# --------------------------------------------------------------------------- transactions


@attrs.frozen(eq=False)
class Transactions:
    """A columnar purchase (or activity) log: one row per transaction.

    Attributes:
        customer_ids: Customer identifier per row (strings), shape `(n,)`.
        times: Timestamp per row, `datetime64[s]`.
        quantities: Items per row (CDNOW: number of CDs), integers.
        amounts: Money per row (CDNOW: US dollars), floats.
    """

    customer_ids: npt.NDArray[np.str_]
    times: npt.NDArray[np.datetime64]
    quantities: IntArray
    amounts: FloatArray

    def __attrs_post_init__(self) -> None:
        n = len(self.customer_ids)
        for field in ("times", "quantities", "amounts"):
            if len(getattr(self, field)) != n:
                raise SpecValidationError(
                    f"Transactions.{field} has {len(getattr(self, field))} rows but customer_ids "
                    f"has {n}; give one value per transaction.",
                    details={"field": field},
                )
        if n and not np.all(np.isfinite(self.amounts)):
            bad = int(np.flatnonzero(~np.isfinite(self.amounts))[0])
            raise SpecValidationError(
                f"Transactions.amounts[{bad}] is not finite; drop or fix that row.",
                details={"field": "amounts", "index": bad},
            )

    @classmethod
    def from_records(
        cls,
        customer_ids: Sequence[str | int],
        times: Sequence[dt.date | dt.datetime] | npt.NDArray[np.datetime64],
        amounts: Sequence[float] | FloatArray,
        quantities: Sequence[int] | IntArray | None = None,
    ) -> Transactions:
        """Build from plain Python sequences (one entry per transaction).

        Raises:
            SpecValidationError: The columns differ in length, a time is not a date/datetime,
                or an amount is not finite.
        """
        amounts_arr = np.asarray(amounts, dtype=np.float64)
        qty = (
            np.ones(len(customer_ids), dtype=np.int64)
            if quantities is None
            else np.asarray(quantities, dtype=np.int64)
        )
        return cls(
            np.asarray([str(c) for c in customer_ids], dtype=np.str_),
            _as_datetime64(times, "times"),
            qty,
            amounts_arr,
        )

    def __len__(self) -> int:
        return len(self.customer_ids)

    @classmethod
    def concat(cls, *parts: Transactions) -> Transactions:
        """Stack several logs into one (rows keep their order, part by part)."""
        if not parts:
            raise SpecValidationError(
                "Transactions.concat needs at least one log.", details={"field": "parts"}
            )
        return cls(
            np.concatenate([p.customer_ids for p in parts]),
            np.concatenate([p.times for p in parts]),
            np.concatenate([p.quantities for p in parts]),
            np.concatenate([p.amounts for p in parts]),
        )

    def between(self, start: dt.date | None = None, end: dt.date | None = None) -> Transactions:
        """Rows with `start <= time < end` (either bound optional)."""
        mask = np.ones(len(self), dtype=bool)
        if start is not None:
            mask &= self.times >= np.datetime64(start, "s")
        if end is not None:
            mask &= self.times < np.datetime64(end, "s")
        return Transactions(
            self.customer_ids[mask], self.times[mask], self.quantities[mask], self.amounts[mask]
        )

    def to_frame(self) -> pd.DataFrame:
        """Return the log as a pandas DataFrame (`customer_id, time, quantity, amount`)."""
        pd = _require_pandas("Transactions.to_frame()")
        return pd.DataFrame(
            {
                "customer_id": self.customer_ids,
                "time": self.times.astype("datetime64[ns]"),
                "quantity": self.quantities,
                "amount": self.amounts,
            }
        )

    def monthly_metrics(self) -> dict[str, MetricSeries]:
        """Monthly business metrics, ready for `GrowthHypothesisGenerator`.

        Returns:
            `new_customers` (first purchase that month), `active_customers`, `revenue`,
            `orders`, `orders_per_active` and `average_order_value`, one point per calendar
            month from the first to the last transaction.
        """
        if len(self) == 0:
            raise SpecValidationError(
                "monthly_metrics needs at least one transaction.", details={"field": "customer_ids"}
            )
        month = _month_index(self.times)
        first = int(month.min())
        offset = month - first
        periods = int(offset.max()) + 1
        _, cust = np.unique(self.customer_ids, return_inverse=True)
        first_month = np.full(int(cust.max()) + 1, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first_month, cust, offset)
        new = np.bincount(first_month, minlength=periods).astype(np.float64)
        pairs = np.unique(cust.astype(np.int64) * periods + offset)
        active = np.bincount(pairs % periods, minlength=periods).astype(np.float64)
        revenue = np.bincount(offset, weights=self.amounts, minlength=periods)
        orders = np.bincount(offset, minlength=periods).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_active = np.where(active > 0, orders / np.maximum(active, 1), 0.0)
            aov = np.where(orders > 0, revenue / np.maximum(orders, 1), 0.0)
        labels = tuple(_month_label(first + k) for k in range(periods))
        return {
            "new_customers": MetricSeries("new_customers", labels, new),
            "active_customers": MetricSeries("active_customers", labels, active),
            "revenue": MetricSeries("revenue", labels, revenue),
            "orders": MetricSeries("orders", labels, orders),
            "orders_per_active": MetricSeries("orders_per_active", labels, per_active),
            "average_order_value": MetricSeries("average_order_value", labels, aov),
        }


#: Where to download `CDNOW_master.txt` (the `lifetimes` package's copy, MIT licence).
CDNOW_DOWNLOAD_URL = (
    "https://raw.githubusercontent.com/CamDavidsonPilon/lifetimes/master/lifetimes/datasets/"
    "CDNOW_master.txt"
)


def load_cdnow(path: str | os.PathLike[str]) -> Transactions:
    """Load the CDNOW purchase history (`CDNOW_master.txt`).

    The file is whitespace separated with a header line: `customer_id date(YYYYMMDD)
    number_of_cds dollar_value`, 69,659 purchases of 23,570 customers who first bought in
    January-March 1997, followed until June 1998 (Fader and Hardie's data set, as shipped by the
    `lifetimes` package).

    The data set is not bundled with ContractSpec: download `CDNOW_master.txt` (MIT licence) from
    the `lifetimes` package's datasets, `CDNOW_DOWNLOAD_URL`, and pass its path.

    Args:
        path: Path of `CDNOW_master.txt`; a relative path is resolved against the current working
            directory (in Jupyter, the notebook's folder).

    Returns:
        A `Transactions` log with customer ids as strings (leading zeros kept).

    Raises:
        ConfigurationError: No file at `path`; the message names the absolute path tried and
            where to download the file.
        SpecValidationError: A line does not have four fields or a field does not parse.
    """
    source = Path(path)
    if not source.is_file():
        tried = source.expanduser().absolute()
        raise ConfigurationError(
            f"load_cdnow: no file at {tried} (path={os.fspath(path)!r}, working directory "
            f"{Path.cwd()}). The CDNOW purchase history is not bundled with ContractSpec: "
            f"download CDNOW_master.txt from {CDNOW_DOWNLOAD_URL} (MIT licence) and pass its path.",
            details={"field": "path", "path": str(tried)},
        )
    text = source.read_text(encoding="utf-8").splitlines()
    ids: list[str] = []
    dates: list[str] = []
    qty: list[int] = []
    amt: list[float] = []
    for lineno, line in enumerate(text, start=1):
        parts = line.split()
        if not parts or parts[0] == "customer_id":
            continue
        if len(parts) != 4:
            raise SpecValidationError(
                f"{path}:{lineno}: expected 4 fields (customer_id date number_of_cds "
                f"dollar_value), got {len(parts)}.",
                details={"field": "line", "line": lineno},
            )
        try:
            d = parts[1]
            dates.append(f"{d[0:4]}-{d[4:6]}-{d[6:8]}")
            qty.append(int(parts[2]))
            amt.append(float(parts[3]))
        except ValueError as exc:
            raise SpecValidationError(
                f"{path}:{lineno}: cannot parse {line.strip()!r} ({exc}).",
                details={"field": "line", "line": lineno},
            ) from None
        ids.append(parts[0])
    try:
        times = np.array(dates, dtype="datetime64[D]").astype("datetime64[s]")
    except ValueError as exc:
        raise SpecValidationError(
            f"{path}: a date is not YYYYMMDD ({exc}).", details={"field": "date"}
        ) from None
    return Transactions(
        np.array(ids, dtype=np.str_),
        times,
        np.array(qty, dtype=np.int64),
        np.array(amt, dtype=np.float64),
    )


# --------------------------------------------------------------------------- funnels


@attrs.frozen
class FunnelResult:
    """Conversion through an ordered funnel.

    Attributes:
        steps: Step names in funnel order.
        window: Time allowed from entering (step 1) to the last step.
        counts: Subjects that reached each step, `counts[0]` = subjects that entered.
        conversion_from_start: `counts[k] / counts[0]` (fractions; 0.0 when nobody entered).
        conversion_from_previous: `counts[k] / counts[k-1]` (`[0]` is 1.0 by definition).
        drop_off: Subjects lost before each step, `counts[k-1] - counts[k]` (`[0]` is 0).
        median_seconds_to_step: Median time from entry to each step among those who reached it
            (seconds; `None` where nobody did).
    """

    steps: tuple[str, ...]
    window: dt.timedelta
    counts: tuple[int, ...]
    conversion_from_start: tuple[float, ...]
    conversion_from_previous: tuple[float, ...]
    drop_off: tuple[int, ...]
    median_seconds_to_step: tuple[float | None, ...]

    def to_frame(self) -> pd.DataFrame:
        """One row per step: `step, count, conversion_from_start, conversion_from_previous,
        drop_off, median_seconds_to_step`."""
        pd = _require_pandas("FunnelResult.to_frame()")
        return pd.DataFrame(
            {
                "step": list(self.steps),
                "count": list(self.counts),
                "conversion_from_start": list(self.conversion_from_start),
                "conversion_from_previous": list(self.conversion_from_previous),
                "drop_off": list(self.drop_off),
                "median_seconds_to_step": [
                    math.nan if s is None else s for s in self.median_seconds_to_step
                ],
            }
        )

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(s)}</td><td>{c}</td><td>{fs:.1%}</td><td>{fp:.1%}</td>"
            f"<td>{d}</td></tr>"
            for s, c, fs, fp, d in zip(
                self.steps,
                self.counts,
                self.conversion_from_start,
                self.conversion_from_previous,
                self.drop_off,
                strict=True,
            )
        )
        return (
            f"<table><caption>Funnel within {self.window}</caption><thead><tr><th>step</th>"
            "<th>subjects</th><th>from start</th><th>from previous</th><th>drop-off</th></tr>"
            f"</thead><tbody>{rows}</tbody></table>"
        )


class FunnelAnalyzer:
    """Ordered funnel conversion within a time window.

    A subject *enters* at any occurrence of the first step and *reaches* step `k` if it has
    occurrences of steps `1..k` in that order (each a later event than the previous one; the same
    step name may repeat, e.g. `purchase, purchase, purchase`) no later than `window` after the
    entry. Each subject counts once, at the deepest step any of its entries reaches (the
    "any entry" convention of Mixpanel and Amplitude's ordered funnels). For a fixed entry the
    earliest eligible event of each next step is optimal, so the search is greedy per entry.

    Args:
        steps: Event names in funnel order (at least two).
        window: Maximum time from entry to the last step (> 0).

    Raises:
        SpecValidationError: Fewer than two steps or a non-positive window.
    """

    def __init__(self, steps: Sequence[str], window: dt.timedelta) -> None:
        if isinstance(steps, str) or len(steps) < 2:
            raise SpecValidationError(
                f"FunnelAnalyzer needs at least two step names, got {steps!r}.",
                details={"field": "steps"},
            )
        if not isinstance(window, dt.timedelta) or window <= dt.timedelta(0):
            raise SpecValidationError(
                f"FunnelAnalyzer.window must be a positive timedelta, got {window!r}.",
                details={"field": "window"},
            )
        self.steps: tuple[str, ...] = tuple(str(s) for s in steps)
        self.window = window

    def analyze(
        self,
        subjects: Sequence[str | int] | npt.ArrayLike,
        events: Sequence[str] | npt.ArrayLike,
        times: Sequence[dt.date | dt.datetime] | npt.NDArray[np.datetime64],
    ) -> FunnelResult:
        """Count subjects reaching each step.

        Args:
            subjects: Subject (user) id per event.
            events: Event name per event; names not in `steps` are ignored.
            times: Time per event (`date`, `datetime` or `datetime64`).

        Returns:
            A `FunnelResult`.

        Raises:
            SpecValidationError: The three columns differ in length or a time is invalid.
        """
        subj = np.asarray(subjects).astype(np.str_)
        names = np.asarray(events).astype(np.str_)
        when = _as_datetime64(times, "times")
        if not (len(subj) == len(names) == len(when)):
            raise SpecValidationError(
                f"FunnelAnalyzer.analyze got {len(subj)} subjects, {len(names)} events and "
                f"{len(when)} times; give one of each per event.",
                details={"field": "events"},
            )
        step_code = {name: i for i, name in enumerate(dict.fromkeys(self.steps))}
        codes = np.array([step_code.get(str(e), -1) for e in names], dtype=np.int64)
        keep = codes >= 0
        subj, codes, secs = subj[keep], codes[keep], when[keep].astype(np.int64)
        order = np.lexsort((secs, subj))
        subj, codes, secs = subj[order], codes[order], secs[order]
        wanted = [step_code[s] for s in self.steps]
        window_s = int(self.window.total_seconds())
        k = len(self.steps)
        reached = np.zeros(k, dtype=np.int64)
        to_step: list[list[int]] = [[] for _ in range(k)]
        bounds: list[int] = (
            np.flatnonzero(np.r_[True, subj[1:] != subj[:-1], True]).tolist() if len(subj) else []
        )
        for lo, hi in itertools.pairwise(bounds):
            depth, delays = self._deepest(codes[lo:hi], secs[lo:hi], wanted, window_s)
            if depth:
                reached[:depth] += 1
                for i in range(depth):
                    to_step[i].append(delays[i])
        counts = tuple(int(c) for c in reached)
        entered = counts[0]
        from_start = tuple((c / entered) if entered else 0.0 for c in counts)
        from_prev = (
            1.0,
            *tuple(counts[i] / counts[i - 1] if counts[i - 1] else 0.0 for i in range(1, k)),
        )
        drop = (0, *tuple(counts[i - 1] - counts[i] for i in range(1, k)))
        medians = tuple(float(np.median(d)) if d else None for d in to_step)
        return FunnelResult(self.steps, self.window, counts, from_start, from_prev, drop, medians)

    @staticmethod
    def _deepest(
        codes: IntArray, secs: IntArray, wanted: list[int], window_s: int
    ) -> tuple[int, list[int]]:
        positions: dict[int, list[int]] = {}
        for pos, code in enumerate(codes.tolist()):
            positions.setdefault(code, []).append(pos)
        entries = positions.get(wanted[0], [])
        best = 0
        best_delays: list[int] = []
        sec_list = secs.tolist()
        for entry in entries:
            deadline = sec_list[entry] + window_s
            pos = entry
            delays = [0]
            for code in wanted[1:]:
                cand = positions.get(code, [])
                j = bisect.bisect_right(cand, pos)
                if j == len(cand) or sec_list[cand[j]] > deadline:
                    break
                pos = cand[j]
                delays.append(sec_list[pos] - sec_list[entry])
            if len(delays) > best:
                best, best_delays = len(delays), delays
                if best == len(wanted):
                    break
        return best, best_delays


# --------------------------------------------------------------------------- cohorts


@attrs.frozen(eq=False)
class CohortTable:
    """Monthly acquisition cohorts with retention and cumulative LTV.

    Rows are cohorts (the calendar month of a customer's first transaction), columns are month
    offsets since acquisition (`0` = the acquisition month). Cells a cohort has not lived through
    yet (after the last month of data) are `NaN` in the ratio matrices and `-1` in `active`.

    Attributes:
        cohorts: Cohort labels `YYYY-MM`, oldest first.
        sizes: Customers acquired per cohort, shape `(cohorts,)`.
        active: Customers of the cohort with a transaction in month offset `k`,
            shape `(cohorts, offsets)`.
        revenue: Money spent by the cohort in month offset `k`.
        retention: `active / sizes` (fractions; offset 0 is always 1.0).
        ltv: Cumulative revenue per acquired customer up to and including offset `k`.
        last_month: Label of the last month with data.
    """

    cohorts: tuple[str, ...]
    sizes: IntArray
    active: IntArray
    revenue: FloatArray
    retention: FloatArray
    ltv: FloatArray
    last_month: str

    def to_frame(
        self, kind: Literal["retention", "ltv", "active", "revenue"] = "retention"
    ) -> pd.DataFrame:
        """Return one matrix as a DataFrame indexed by cohort, columns = month offset.

        Raises:
            SpecValidationError: Unknown `kind`.
            ImportError: pandas is not installed.
        """
        if kind not in ("retention", "ltv", "active", "revenue"):
            raise SpecValidationError(
                f"kind must be one of ['retention', 'ltv', 'active', 'revenue'], got {kind!r}.",
                details={"field": "kind"},
            )
        pd = _require_pandas("CohortTable.to_frame()")
        data = getattr(self, kind)
        frame = pd.DataFrame(data, index=pd.Index(self.cohorts, name="cohort"))
        frame.columns = pd.Index(range(data.shape[1]), name="month")
        if kind == "active":
            frame = frame.where(frame >= 0)
        return frame

    def _repr_html_(self) -> str:
        head = "".join(f"<th>M{k}</th>" for k in range(self.retention.shape[1]))
        rows = []
        for i, label in enumerate(self.cohorts):
            cells = []
            for value in self.retention[i]:
                if math.isnan(value):
                    cells.append("<td></td>")
                else:
                    shade = int(255 - 155 * value)
                    cells.append(
                        f'<td style="background:rgb({shade},{shade},255)">{value:.1%}</td>'
                    )
            rows.append(f"<tr><th>{label}</th><td>{self.sizes[i]}</td>{''.join(cells)}</tr>")
        return (
            "<table><caption>Retention by monthly acquisition cohort</caption>"
            f"<thead><tr><th>cohort</th><th>size</th>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
        )


class CohortTracker:
    """Accumulates transactions and builds monthly acquisition cohorts.

    A customer belongs to the cohort of the month of their first transaction; they are *retained*
    in month offset `k` if they have at least one transaction in that calendar month. LTV is the
    cohort's cumulative revenue divided by its size (so churned customers pull it down, as they
    should).

    Example:
        ```python
        tracker = CohortTracker()
        tracker.add(load_cdnow("../shared/data/cdnow/CDNOW_master.txt"))
        table = tracker.table()
        table.retention[0, 1]  # share of January-1997 customers buying again in February
        ```
    """

    def __init__(self) -> None:
        self._parts: list[Transactions] = []

    def add(self, transactions: Transactions) -> None:
        """Add a batch of transactions (batches may overlap in time, in any order)."""
        if not isinstance(transactions, Transactions):
            raise SpecValidationError(
                f"CohortTracker.add takes Transactions, got {type(transactions).__name__}; "
                "build one with Transactions.from_records(...).",
                details={"field": "transactions"},
            )
        self._parts.append(transactions)

    def table(self) -> CohortTable:
        """Compute the cohort table of everything added so far.

        Raises:
            SpecValidationError: No transactions were added.
        """
        parts = [p for p in self._parts if len(p)]
        if not parts:
            raise SpecValidationError(
                "CohortTracker has no transactions yet; call add(...) first.",
                details={"field": "transactions"},
            )
        ids = np.concatenate([p.customer_ids for p in parts])
        month = _month_index(np.concatenate([p.times for p in parts]))
        amounts = np.concatenate([p.amounts for p in parts])
        first_month_all = int(month.min())
        last = int(month.max())
        _, cust = np.unique(ids, return_inverse=True)
        n_cust = int(cust.max()) + 1
        acq = np.full(n_cust, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(acq, cust, month)
        cohort_months = np.unique(acq)
        cohort_of_customer = np.searchsorted(cohort_months, acq)
        n_cohorts = len(cohort_months)
        n_offsets = last - first_month_all + 1
        row_cohort = cohort_of_customer[cust]
        offset = month - acq[cust]
        sizes = np.bincount(cohort_of_customer, minlength=n_cohorts).astype(np.int64)
        flat = row_cohort * n_offsets + offset
        revenue = np.bincount(flat, weights=amounts, minlength=n_cohorts * n_offsets).reshape(
            n_cohorts, n_offsets
        )
        pairs = np.unique(cust.astype(np.int64) * n_offsets + offset)
        pair_cust = pairs // n_offsets
        pair_flat = cohort_of_customer[pair_cust] * n_offsets + pairs % n_offsets
        active = (
            np.bincount(pair_flat, minlength=n_cohorts * n_offsets)
            .reshape(n_cohorts, n_offsets)
            .astype(np.int64)
        )
        lived = (last - cohort_months)[:, None] >= np.arange(n_offsets)[None, :]
        retention = np.where(lived, active / sizes[:, None], np.nan)
        ltv = np.where(lived, np.cumsum(revenue, axis=1) / sizes[:, None], np.nan)
        active = np.where(lived, active, -1)
        revenue_seen: FloatArray = np.where(lived, revenue, np.nan).astype(np.float64)
        return CohortTable(
            cohorts=tuple(_month_label(int(m)) for m in cohort_months),
            sizes=sizes,
            active=active,
            revenue=revenue_seen,
            retention=retention,
            ltv=ltv,
            last_month=_month_label(last),
        )


# --------------------------------------------------------------------------- churn


@attrs.frozen
class ActivityProfile:
    """What churn scoring knows about one subject at a reference time.

    Attributes:
        subject: Subject (user, customer, org) id.
        recency_days: Days since the last activity (>= 0).
        frequency: Activities in the look-back period (>= 0).
        errors: Failed activities (errors the user hit) in the same period (>= 0).
        monetary: Money the subject spent in the same period (>= 0, any currency used
            consistently): the M of RFM.
    """

    subject: str
    recency_days: float
    frequency: int
    errors: int = 0
    monetary: float = 0.0

    def __attrs_post_init__(self) -> None:
        if not (math.isfinite(self.recency_days) and self.recency_days >= 0):
            raise SpecValidationError(
                f"ActivityProfile.recency_days must be a finite number of days >= 0, got "
                f"{self.recency_days!r}.",
                details={"field": "recency_days"},
            )
        if not (
            isinstance(self.monetary, int | float)
            and math.isfinite(self.monetary)
            and self.monetary >= 0
        ):
            raise SpecValidationError(
                f"ActivityProfile.monetary must be a finite amount >= 0, got {self.monetary!r}; "
                "refunds larger than the spend are not a churn signal, clip them at 0.",
                details={"field": "monetary"},
            )
        for field in ("frequency", "errors"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SpecValidationError(
                    f"ActivityProfile.{field} must be an int >= 0, got {value!r}.",
                    details={"field": field},
                )

    @property
    def error_rate(self) -> float:
        """Errors per activity (0.0 without activity)."""
        return self.errors / self.frequency if self.frequency else 0.0


@attrs.frozen
class ChurnScore:
    """A subject's churn risk.

    Attributes:
        subject: Subject id.
        risk: Probability-like score in (0, 1); higher is more likely to churn.
        band: `low` (< 0.33), `medium` or `high` (>= 0.66).
        profile: The features the score came from.
    """

    subject: str
    risk: float
    band: Literal["low", "medium", "high"]
    profile: ActivityProfile


@attrs.frozen
class _ChurnWeights:
    intercept: float
    recency: float
    frequency: float
    errors: float
    monetary: float


def _features(profiles: Sequence[ActivityProfile]) -> FloatArray:
    """Columns: recency in 30-day months, -log1p(frequency), error rate, -log1p(monetary).
    Risk rises in each."""
    out = np.empty((len(profiles), 4), dtype=np.float64)
    for i, p in enumerate(profiles):
        out[i, 0] = p.recency_days / 30.0
        out[i, 1] = -math.log1p(p.frequency)
        out[i, 2] = p.error_rate
        out[i, 3] = -math.log1p(p.monetary)
    return out


class ChurnPredictor:
    """Recency / frequency / monetary (RFM) and error churn scoring, monotone by construction.

    `risk = sigmoid(b + w_r * recency_months - w_f * log(1 + frequency) + w_e * error_rate
    - w_m * log(1 + monetary))` with `w_r, w_f, w_e, w_m >= 0`: a more recent, more frequent,
    higher-spending or more error-free subject never scores higher risk. The defaults encode that prior; `fit` learns the weights from labelled history
    by maximum likelihood (logistic regression with non-negativity bounds, L-BFGS-B, and a small
    L2 penalty), keeping the monotonicity guarantee.

    Args:
        intercept: Baseline log-odds `b`.
        recency_weight: `w_r`, per 30 days since the last activity.
        frequency_weight: `w_f`, per unit of `log(1 + frequency)`.
        error_weight: `w_e`, per unit of error rate (errors per activity).
        monetary_weight: `w_m`, per unit of `log(1 + monetary)`; 0 by default (the scale of
            money depends on the business, so the prior leaves it to `fit`).

    Raises:
        SpecValidationError: A weight is negative or not finite.
    """

    def __init__(
        self,
        *,
        intercept: float = 0.0,
        recency_weight: float = 1.0,
        frequency_weight: float = 1.0,
        error_weight: float = 4.0,
        monetary_weight: float = 0.0,
    ) -> None:
        for field, value in (
            ("recency_weight", recency_weight),
            ("frequency_weight", frequency_weight),
            ("error_weight", error_weight),
            ("monetary_weight", monetary_weight),
        ):
            if not (math.isfinite(value) and value >= 0):
                raise SpecValidationError(
                    f"ChurnPredictor.{field} must be a finite number >= 0 (risk must not fall as "
                    f"users go quiet or hit errors), got {value!r}.",
                    details={"field": field},
                )
        if not math.isfinite(intercept):
            raise SpecValidationError(
                f"ChurnPredictor.intercept must be finite, got {intercept!r}.",
                details={"field": "intercept"},
            )
        self._w = _ChurnWeights(
            intercept, recency_weight, frequency_weight, error_weight, monetary_weight
        )

    @property
    def weights(self) -> dict[str, float]:
        """Current weights: `intercept`, `recency`, `frequency`, `errors`, `monetary`."""
        return attrs.asdict(self._w)

    @staticmethod
    def profiles(
        subjects: Sequence[str | int] | npt.ArrayLike,
        times: Sequence[dt.date | dt.datetime] | npt.NDArray[np.datetime64],
        *,
        as_of: dt.date | dt.datetime,
        failed: Sequence[bool] | npt.ArrayLike | None = None,
        lookback: dt.timedelta | None = None,
        amounts: Sequence[float] | npt.ArrayLike | None = None,
    ) -> list[ActivityProfile]:
        """Build profiles from an activity log, as seen at `as_of`.

        Args:
            subjects: Subject id per activity.
            times: Time per activity; activities at or after `as_of` are ignored.
            as_of: Reference time (the "now" of the score).
            failed: Whether each activity failed (an error the user hit); none by default.
            lookback: Only count frequency/errors/money within this period before `as_of`
                (recency always uses the whole history).
            amounts: Money per activity (e.g. `Transactions.amounts`), summed per subject into
                `monetary` (negative totals, from refunds, are clipped at 0); none by default.

        Returns:
            One profile per subject with activity before `as_of`, sorted by subject id.
        """
        subj = np.asarray(subjects).astype(np.str_)
        when = _as_datetime64(times, "times")
        err = np.zeros(len(subj), dtype=bool) if failed is None else np.asarray(failed, dtype=bool)
        money = (
            np.zeros(len(subj), dtype=np.float64)
            if amounts is None
            else np.asarray(amounts, dtype=np.float64).reshape(-1)
        )
        if not (len(subj) == len(when) == len(err) == len(money)):
            raise SpecValidationError(
                "ChurnPredictor.profiles needs one subject, time (and failed flag, amount) per "
                "activity.",
                details={"field": "times"},
            )
        if not np.all(np.isfinite(money)):
            raise SpecValidationError(
                "ChurnPredictor.profiles got a non-finite amount; drop or impute NaN/inf first.",
                details={"field": "amounts"},
            )
        now = np.datetime64(
            as_of if isinstance(as_of, dt.datetime) else dt.datetime.combine(as_of, dt.time()), "s"
        )
        before = when < now
        subj, when, err, money = subj[before], when[before], err[before], money[before]
        if not len(subj):
            return []
        names, inv = np.unique(subj, return_inverse=True)
        last = np.full(len(names), np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(last, inv, when.astype(np.int64))
        in_window = np.ones(len(subj), dtype=bool)
        if lookback is not None:
            in_window = when >= now - np.timedelta64(int(lookback.total_seconds()), "s")
        freq = np.bincount(inv, weights=in_window, minlength=len(names)).astype(np.int64)
        errs = np.bincount(inv, weights=in_window & err, minlength=len(names)).astype(np.int64)
        spent = np.maximum(np.bincount(inv, weights=money * in_window, minlength=len(names)), 0.0)
        recency = (now.astype(np.int64) - last) / 86_400.0
        return [
            ActivityProfile(
                str(names[i]), float(recency[i]), int(freq[i]), int(errs[i]), float(spent[i])
            )
            for i in range(len(names))
        ]

    def _logits(self, x: FloatArray) -> FloatArray:
        w = self._w
        logits: FloatArray = w.intercept + x @ np.array(
            [w.recency, w.frequency, w.errors, w.monetary]
        )
        return logits

    def score(self, profile: ActivityProfile) -> ChurnScore:
        """Score one subject."""
        return self.score_many([profile])[0]

    def score_many(self, profiles: Sequence[ActivityProfile]) -> list[ChurnScore]:
        """Score subjects, highest risk first (ties keep input order)."""
        if not profiles:
            return []
        risk = special.expit(self._logits(_features(profiles)))
        order = np.argsort(-risk, kind="stable")
        return [
            ChurnScore(profiles[i].subject, float(risk[i]), _band(float(risk[i])), profiles[i])
            for i in order
        ]

    def fit(
        self,
        profiles: Sequence[ActivityProfile],
        churned: Sequence[bool] | npt.ArrayLike,
        *,
        l2: float = 1e-3,
    ) -> ChurnPredictor:
        """Learn the weights from labelled history; returns `self`.

        Args:
            profiles: Profiles at some past reference time.
            churned: Whether each subject then churned (e.g. no activity in the next 6 months).
            l2: Ridge penalty on the four weights (per subject), for stability.

        Raises:
            SpecValidationError: Lengths differ, fewer than 2 profiles, or only one class.
        """
        y = np.asarray(churned, dtype=np.float64)
        if len(profiles) != len(y) or len(y) < 2:
            raise SpecValidationError(
                f"fit needs one churn label per profile (>= 2), got {len(profiles)} profiles and "
                f"{len(y)} labels.",
                details={"field": "churned"},
            )
        if y.min() == y.max():
            raise SpecValidationError(
                "fit needs both churned and retained subjects in the labels.",
                details={"field": "churned"},
            )
        x = _features(profiles)
        design = np.column_stack([np.ones(len(y)), x])
        n = len(y)

        def loss(beta: FloatArray) -> tuple[float, FloatArray]:
            z = design @ beta
            # log(1 + e^z) - y z, computed stably.
            nll = float(np.sum(np.logaddexp(0.0, z) - y * z)) / n
            grad = design.T @ (special.expit(z) - y) / n
            pen = l2 * float(beta[1:] @ beta[1:])
            grad[1:] += 2.0 * l2 * beta[1:]
            return nll + pen, grad

        w = self._w
        start = np.array([w.intercept, w.recency, w.frequency, w.errors, w.monetary])
        bounds = [(None, None), (0.0, None), (0.0, None), (0.0, None), (0.0, None)]
        fitted = optimize.minimize(loss, start, jac=True, method="L-BFGS-B", bounds=bounds)
        b = fitted.x
        self._w = _ChurnWeights(*(float(v) for v in b))
        return self


def _band(risk: float) -> Literal["low", "medium", "high"]:
    if risk < 1.0 / 3.0:
        return "low"
    if risk < 2.0 / 3.0:
        return "medium"
    return "high"


# --------------------------------------------------------------------------- hypotheses


def _float_array(values: npt.ArrayLike) -> FloatArray:
    return np.asarray(values, dtype=np.float64)


@attrs.frozen(eq=False)
class MetricSeries:
    """A metric observed once per period.

    Attributes:
        name: Metric name.
        periods: Period labels (e.g. `1997-03`), oldest first.
        values: One value per period.
        higher_is_better: Whether an increase is good news (revenue) or bad (churn rate).
    """

    name: str
    periods: tuple[str, ...]
    values: FloatArray = attrs.field(converter=_float_array)
    higher_is_better: bool = True

    def __attrs_post_init__(self) -> None:
        if len(self.periods) != len(self.values):
            raise SpecValidationError(
                f"MetricSeries {self.name!r} has {len(self.periods)} periods but "
                f"{len(self.values)} values.",
                details={"field": "values"},
            )
        if not np.all(np.isfinite(self.values)):
            raise SpecValidationError(
                f"MetricSeries {self.name!r} has non-finite values; fill gaps first.",
                details={"field": "values"},
            )


@attrs.frozen
class ExperimentIdea:
    """A ranked, testable growth hypothesis derived from a metric signal.

    Attributes:
        metric: The metric the signal was found in.
        signal: `declining_trend`, `rising_trend`, `drop` or `spike`.
        period: The period the signal points at (last period of a trend, the anomalous period).
        title: One-line idea.
        hypothesis: "If we ..., then <metric> will ..., because ..." sentence.
        primary_metric: Metric the experiment should be judged on.
        score: Ranking score = importance x relative impact x confidence (higher first).
        evidence: Numbers behind the idea (slope, p-value, z-score, change).
    """

    metric: str
    signal: Literal["declining_trend", "rising_trend", "drop", "spike"]
    period: str
    title: str
    hypothesis: str
    primary_metric: str
    score: float
    evidence: dict[str, float]


class GrowthHypothesisGenerator:
    """Turn metric trends and anomalies into ranked experiment ideas.

    Two detectors run on each `MetricSeries`:

    * **trend**: ordinary least squares over the last `trend_window` periods
      (`scipy.stats.linregress`); a slope with p-value below `trend_alpha` is a trend, its impact
      the fitted change over the window relative to the window mean.
    * **anomaly**: the modified z-score of each period (or of the last `anomaly_window`) against
      all the periods before it, `0.6745 (x - median) / MAD` (Iglewicz and Hoaglin, 1993); `|z| >
      anomaly_threshold` (3.5 by default) is a drop or spike, its impact the relative change
      from the median.

    A bad signal (a decline or drop of a higher-is-better metric) becomes a "recover" idea and a
    good one a "double down" idea. Ideas are ranked by `importance x impact x confidence`, with
    confidence `1 - p` for trends and `min(1, |z| / 10) ` for anomalies, and bad news first
    among equals (it is multiplied by `bad_news_weight`).

    Args:
        importance: Business weight per metric name (default 1.0).
        trend_window: Most recent periods used for the trend (>= 3).
        trend_alpha: Significance level of the trend slope.
        anomaly_window: Most recent periods checked for anomalies (>= 1); every period with at
            least three before it when `None`.
        anomaly_threshold: Modified z-score cut-off.
        bad_news_weight: Multiplier for signals that hurt the metric.

    Raises:
        SpecValidationError: A window or threshold is out of range.
    """

    def __init__(
        self,
        *,
        importance: Mapping[str, float] | None = None,
        trend_window: int = 12,
        trend_alpha: float = 0.05,
        anomaly_window: int | None = None,
        anomaly_threshold: float = 3.5,
        bad_news_weight: float = 1.5,
    ) -> None:
        if trend_window < 3:
            raise SpecValidationError(
                f"trend_window must be >= 3 periods, got {trend_window}.",
                details={"field": "trend_window"},
            )
        if anomaly_window is not None and anomaly_window < 1:
            raise SpecValidationError(
                f"anomaly_window must be >= 1, got {anomaly_window}.",
                details={"field": "anomaly_window"},
            )
        if not 0 < trend_alpha < 1:
            raise SpecValidationError(
                f"trend_alpha must lie in (0, 1), got {trend_alpha}.",
                details={"field": "trend_alpha"},
            )
        if not anomaly_threshold > 0:
            raise SpecValidationError(
                f"anomaly_threshold must be > 0, got {anomaly_threshold}.",
                details={"field": "anomaly_threshold"},
            )
        self.importance = dict(importance or {})
        self.trend_window = trend_window
        self.trend_alpha = trend_alpha
        self.anomaly_window = anomaly_window
        self.anomaly_threshold = anomaly_threshold
        self.bad_news_weight = bad_news_weight

    def generate(
        self, series: Iterable[MetricSeries], *, limit: int | None = None
    ) -> list[ExperimentIdea]:
        """Detect signals in every series and return experiment ideas, best first.

        Args:
            series: The metrics to scan.
            limit: Keep only the top `limit` ideas.

        Returns:
            Ideas sorted by `score` (descending), then metric name.
        """
        ideas: list[ExperimentIdea] = []
        for s in series:
            ideas.extend(self._trend(s))
            ideas.extend(self._anomalies(s))
        ideas.sort(key=lambda i: (-i.score, i.metric, i.period))
        return ideas[:limit] if limit is not None else ideas

    def _weight(self, s: MetricSeries, bad: bool) -> float:
        return self.importance.get(s.name, 1.0) * (self.bad_news_weight if bad else 1.0)

    def _trend(self, s: MetricSeries) -> list[ExperimentIdea]:
        values = s.values[-self.trend_window :]
        if len(values) < self.trend_window or np.ptp(values) == 0:
            return []
        x = np.arange(len(values), dtype=np.float64)
        fit = sps.linregress(x, values)
        p = float(fit.pvalue)
        mean = float(np.mean(values))
        if p >= self.trend_alpha or mean == 0:
            return []
        change = float(fit.slope) * (len(values) - 1) / abs(mean)
        rising = change > 0
        bad = rising != s.higher_is_better
        signal: Literal["declining_trend", "rising_trend"] = (
            "rising_trend" if rising else "declining_trend"
        )
        score = self._weight(s, bad) * min(abs(change), 10.0) * (1.0 - p)
        direction = "rising" if rising else "falling"
        if bad:
            title = f"Reverse the {direction} trend of {s.name}"
            hypothesis = (
                f"If we test a change aimed at {s.name} (onboarding, pricing or re-engagement), then "
                f"{s.name} will stop {direction}, because it moved {change:+.0%} over the last "
                f"{len(values)} periods (p = {p:.2g})."
            )
        else:
            title = f"Double down on what drives {s.name}"
            hypothesis = (
                f"If we extend what lifted {s.name} to more users, then {s.name} will keep "
                f"{direction}, because it moved {change:+.0%} over the last {len(values)} periods "
                f"(p = {p:.2g})."
            )
        return [
            ExperimentIdea(
                metric=s.name,
                signal=signal,
                period=s.periods[-1],
                title=title,
                hypothesis=hypothesis,
                primary_metric=s.name,
                score=score,
                evidence={"slope": float(fit.slope), "p_value": p, "relative_change": change},
            )
        ]

    def _anomalies(self, s: MetricSeries) -> list[ExperimentIdea]:
        # (index, z, median, relative change) of every anomalous period.
        found: list[tuple[int, float, float, float]] = []
        n = len(s.values)
        window = n if self.anomaly_window is None else self.anomaly_window
        for idx in range(max(n - window, 3), n):
            history = s.values[:idx]
            med = float(np.median(history))
            mad = float(np.median(np.abs(history - med)))
            value = float(s.values[idx])
            if mad == 0:
                if value == med:
                    continue
                z = math.copysign(math.inf, value - med)
            else:
                z = 0.6745 * (value - med) / mad
            if abs(z) > self.anomaly_threshold:
                change = (value - med) / abs(med) if med else math.copysign(1.0, value - med)
                found.append((idx, z, med, change))
        # A run of consecutive anomalies in one direction is one event (a level shift): report
        # it once, at its first period, with its strongest evidence.
        runs: list[list[tuple[int, float, float, float]]] = []
        for item in found:
            prev = runs[-1][-1] if runs else None
            if prev is not None and item[0] == prev[0] + 1 and (item[1] > 0) == (prev[1] > 0):
                runs[-1].append(item)
            else:
                runs.append([item])
        return [self._anomaly_idea(s, run) for run in runs]

    def _anomaly_idea(
        self, s: MetricSeries, run: list[tuple[int, float, float, float]]
    ) -> ExperimentIdea:
        idx, z, med, change = run[0]
        spike = z > 0
        bad = spike != s.higher_is_better
        strongest = max(min(abs(c), 10.0) * min(1.0, abs(zz) / 10.0) for _, zz, _, c in run)
        score = self._weight(s, bad) * strongest
        kind: Literal["drop", "spike"] = "spike" if spike else "drop"
        period = s.periods[idx]
        value = float(s.values[idx])
        lasting = f" and stayed there for {len(run)} periods" if len(run) > 1 else ""
        if bad:
            title = f"Investigate and recover the {kind} of {s.name} in {period}"
            hypothesis = (
                f"If we fix what changed around {period} (a release, a campaign ending, a broken "
                f"flow), then {s.name} will return towards its median {med:.4g}, because it moved "
                f"{change:+.0%} (modified z = {z:.1f}){lasting}."
            )
        else:
            title = f"Find and scale what caused the {kind} of {s.name} in {period}"
            hypothesis = (
                f"If we repeat what happened around {period} for more users, then {s.name} will "
                f"rise above its median {med:.4g}, because it moved {change:+.0%} (modified z = "
                f"{z:.1f}){lasting}."
            )
        return ExperimentIdea(
            metric=s.name,
            signal=kind,
            period=period,
            title=title,
            hypothesis=hypothesis,
            primary_metric=s.name,
            score=score,
            evidence={
                "value": value,
                "median": med,
                "modified_z": z if math.isfinite(z) else math.copysign(1e9, z),
                "relative_change": change,
                "periods": float(len(run)),
            },
        )
