"""Monthly acquisition cohorts on CDNOW equal an independent pandas computation."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from growth_b_data import cdnow, cdnow_path

from contractspec.core.errors import SpecValidationError
from contractspec.growth.analytics import CohortTracker, Transactions


def _pandas_cohorts() -> tuple[pd.Series, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Sizes, active counts, retention and cumulative LTV per customer, written with pandas."""
    df = pd.read_csv(cdnow_path(), sep=r"\s+", dtype={"customer_id": str, "date": str})
    df["month"] = pd.to_datetime(df["date"], format="%Y%m%d").dt.to_period("M")
    df["cohort"] = df.groupby("customer_id")["month"].transform("min")
    df["offset"] = (df["month"].dt.year - df["cohort"].dt.year) * 12 + (
        df["month"].dt.month - df["cohort"].dt.month
    )
    sizes = df.groupby("cohort")["customer_id"].nunique()
    active = df.groupby(["cohort", "offset"])["customer_id"].nunique().unstack(fill_value=0)
    retention = active.div(sizes, axis=0)
    revenue = df.groupby(["cohort", "offset"])["dollar_value"].sum().unstack(fill_value=0.0)
    ltv = revenue.cumsum(axis=1).div(sizes, axis=0)
    return sizes, active, retention, ltv


def test_cdnow_cohorts_match_pandas() -> None:
    """Cohort sizes, active counts, retention and LTV equal the pandas computation cell by cell."""
    tracker = CohortTracker()
    tracker.add(cdnow())
    table = tracker.table()
    sizes, active, retention, ltv = _pandas_cohorts()
    assert table.cohorts == tuple(str(p) for p in sizes.index)
    assert table.cohorts == ("1997-01", "1997-02", "1997-03")
    assert table.sizes.tolist() == sizes.tolist()
    assert int(table.sizes.sum()) == 23_570
    assert table.last_month == "1998-06"
    for i in range(len(table.cohorts)):
        lived = 18 - i  # months from the cohort's month to June 1998 inclusive
        assert table.active[i, :lived].tolist() == active.iloc[i, :lived].astype(int).tolist()
        np.testing.assert_allclose(
            table.retention[i, :lived], retention.iloc[i, :lived], rtol=1e-12
        )
        np.testing.assert_allclose(table.ltv[i, :lived], ltv.iloc[i, :lived], rtol=1e-10)
        assert np.isnan(table.retention[i, lived:]).all()
        assert (table.active[i, lived:] == -1).all()
    assert table.retention[:, 0].tolist() == [1.0, 1.0, 1.0]


def test_batches_in_any_order_give_the_same_table() -> None:
    """Adding the log in two time-reversed batches changes nothing."""
    tx = cdnow()
    whole = CohortTracker()
    whole.add(tx)
    split = CohortTracker()
    split.add(tx.between(start=dt.date(1997, 9, 1)))
    split.add(tx.between(end=dt.date(1997, 9, 1)))
    a, b = whole.table(), split.table()
    assert a.cohorts == b.cohorts
    assert np.array_equal(a.active, b.active)
    np.testing.assert_allclose(a.ltv, b.ltv, rtol=1e-12)


def test_small_log_by_hand() -> None:
    """Three customers over three months give the hand-computed matrices."""
    tx = Transactions.from_records(
        ["a", "a", "b", "c", "c", "a"],
        [
            dt.date(2024, 1, 5),
            dt.date(2024, 2, 1),
            dt.date(2024, 1, 20),
            dt.date(2024, 2, 10),
            dt.date(2024, 2, 11),
            dt.date(2024, 3, 31),
        ],
        [10.0, 5.0, 20.0, 7.0, 3.0, 1.0],
    )
    tracker = CohortTracker()
    tracker.add(tx)
    t = tracker.table()
    assert t.cohorts == ("2024-01", "2024-02")
    assert t.sizes.tolist() == [2, 1]
    assert t.active.tolist() == [[2, 1, 1], [1, 0, -1]]
    np.testing.assert_array_equal(t.retention, [[1.0, 0.5, 0.5], [1.0, 0.0, np.nan]])
    np.testing.assert_array_equal(t.ltv, [[15.0, 17.5, 18.0], [10.0, 10.0, np.nan]])
    frame = t.to_frame("ltv")
    assert frame.loc["2024-01", 2] == 18.0
    assert list(frame.columns) == [0, 1, 2]
    assert "<caption>Retention by monthly acquisition cohort</caption>" in t._repr_html_()


def test_empty_tracker_and_bad_kind_raise() -> None:
    """An empty tracker and an unknown matrix name raise SpecValidationError."""
    with pytest.raises(SpecValidationError, match="no transactions yet"):
        CohortTracker().table()
    tracker = CohortTracker()
    tracker.add(Transactions.from_records(["a"], [dt.date(2024, 1, 1)], [1.0]))
    with pytest.raises(SpecValidationError) as info:
        tracker.table().to_frame("churn")  # type: ignore[arg-type]
    assert info.value.details["field"] == "kind"
