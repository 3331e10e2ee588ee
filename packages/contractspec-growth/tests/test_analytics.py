"""Funnels, churn scoring and experiment ideas, on hand-made logs and on real CDNOW purchases."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from attrs import evolve
from growth_b_data import cdnow, cdnow_path
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from contractspec.core.errors import SpecValidationError
from contractspec.growth.analytics import (
    ActivityProfile,
    ChurnPredictor,
    FunnelAnalyzer,
    GrowthHypothesisGenerator,
    MetricSeries,
    Transactions,
    load_cdnow,
)

D = dt.datetime


# --------------------------------------------------------------------------- loader


def test_load_cdnow_reads_every_purchase() -> None:
    """The loader returns all 69,659 rows of 23,570 customers with their dates and amounts."""
    tx = cdnow()
    assert len(tx) == 69_659
    assert len(np.unique(tx.customer_ids)) == 23_570
    assert tx.customer_ids[0] == "00001"
    assert tx.times[0] == np.datetime64("1997-01-01T00:00:00")
    assert (tx.quantities[0], tx.amounts[0]) == (1, 11.77)
    reference = pd.read_csv(cdnow_path(), sep=r"\s+")
    assert tx.amounts.sum() == pytest.approx(reference["dollar_value"].sum(), rel=1e-12)
    assert int(tx.quantities.sum()) == int(reference["number_of_cds"].sum())


def test_load_cdnow_rejects_a_malformed_line(tmp_path: Path) -> None:
    """A line without four fields is reported with its line number."""
    path = tmp_path / "bad.txt"
    path.write_text(" customer_id  date number_of_cds  dollar_value\n 00001 19970101 1\n")
    with pytest.raises(SpecValidationError, match=r"bad.txt:2: expected 4 fields") as info:
        load_cdnow(path)
    assert info.value.details["line"] == 2


def test_transactions_columns_must_align() -> None:
    """Columns of different lengths are refused."""
    with pytest.raises(SpecValidationError, match="amounts has 1 rows"):
        Transactions.from_records(["a", "b"], [dt.date(2024, 1, 1)] * 2, [1.0])


# --------------------------------------------------------------------------- funnels


def test_funnel_counts_ordered_steps_within_the_window() -> None:
    """Only steps done in order within the window count; drop-offs add up."""
    funnel = FunnelAnalyzer(["visit", "signup", "purchase"], dt.timedelta(days=7))
    res = funnel.analyze(
        ["u1", "u1", "u1", "u2", "u2", "u3", "u3", "u4", "u4", "u4"],
        ["visit", "signup", "purchase", "visit", "purchase", "signup", "visit", "visit", "signup", "purchase"],
        [
            D(2024, 1, 1), D(2024, 1, 2), D(2024, 1, 3),  # u1: full funnel
            D(2024, 1, 1), D(2024, 1, 2),  # u2: skipped signup
            D(2024, 1, 1), D(2024, 1, 2),  # u3: signup before visit
            D(2024, 1, 1), D(2024, 1, 2), D(2024, 1, 20),  # u4: purchase too late
        ],
    )  # fmt: skip
    assert res.counts == (4, 2, 1)
    assert res.drop_off == (0, 2, 1)
    assert res.conversion_from_start == (1.0, 0.5, 0.25)
    assert res.conversion_from_previous == (1.0, 0.5, 0.5)
    assert res.median_seconds_to_step == (0.0, 86_400.0, 172_800.0)


def test_funnel_uses_the_best_entry() -> None:
    """A later entry that converts counts even if the first entry did not."""
    funnel = FunnelAnalyzer(["visit", "purchase"], dt.timedelta(hours=1))
    res = funnel.analyze(
        ["u", "u", "u"],
        ["visit", "visit", "purchase"],
        [D(2024, 1, 1, 8), D(2024, 1, 1, 12), D(2024, 1, 1, 12, 30)],
    )
    assert res.counts == (1, 1)
    assert res.median_seconds_to_step == (0.0, 1800.0)


def test_repeated_steps_need_distinct_events() -> None:
    """purchase -> purchase needs two purchases, not the same one twice."""
    funnel = FunnelAnalyzer(["purchase", "purchase"], dt.timedelta(days=30))
    res = funnel.analyze(
        ["a", "b", "b"], ["purchase"] * 3, [D(2024, 1, 1), D(2024, 1, 1), D(2024, 1, 1)]
    )
    assert res.counts == (2, 1)


def test_cdnow_repeat_purchase_funnel_matches_pandas() -> None:
    """Customers with 2 and 3 purchases within 90 days equal a pandas gap computation."""
    tx = cdnow()
    res = FunnelAnalyzer(["purchase", "purchase", "purchase"], dt.timedelta(days=90)).analyze(
        tx.customer_ids, np.full(len(tx), "purchase"), tx.times
    )
    df = pd.DataFrame({"c": tx.customer_ids, "t": tx.times}).sort_values(["c", "t"], kind="stable")
    g = df.groupby("c")["t"]
    window = pd.Timedelta(days=90)
    two = ((g.shift(-1) - df["t"]) <= window).groupby(df["c"]).any()
    three = ((g.shift(-2) - df["t"]) <= window).groupby(df["c"]).any()
    assert res.counts == (23_570, int(two.sum()), int(three.sum()))
    assert res.conversion_from_start[1] == pytest.approx(two.mean(), rel=1e-12)
    frame = res.to_frame()
    assert frame["count"].tolist() == list(res.counts)
    assert "<caption>Funnel within 90 days, 0:00:00</caption>" in res._repr_html_()


@pytest.mark.parametrize(
    ("steps", "window", "field"),
    [
        (["only"], dt.timedelta(days=1), "steps"),
        (["a", "b"], dt.timedelta(0), "window"),
        ("ab", dt.timedelta(days=1), "steps"),
    ],
)
def test_funnel_bad_configuration(steps: list[str], window: dt.timedelta, field: str) -> None:
    """Fewer than two steps or a non-positive window raise SpecValidationError."""
    with pytest.raises(SpecValidationError) as info:
        FunnelAnalyzer(steps, window)
    assert info.value.details["field"] == field


def test_funnel_rejects_non_dates() -> None:
    """A time that is not a date/datetime is reported with its index."""
    with pytest.raises(SpecValidationError, match=r"times\[1\]"):
        FunnelAnalyzer(["a", "b"], dt.timedelta(days=1)).analyze(
            ["u", "u"],
            ["a", "b"],
            [D(2024, 1, 1), "tomorrow"],  # type: ignore[list-item]
        )


# --------------------------------------------------------------------------- churn


def test_recent_frequent_error_free_user_scores_low_risk() -> None:
    """The default scorer ranks a quiet, rare, error-prone user far above an active clean one."""
    predictor = ChurnPredictor()
    active = predictor.score(ActivityProfile("active", recency_days=1, frequency=40, errors=0))
    dormant = predictor.score(ActivityProfile("dormant", recency_days=120, frequency=1, errors=1))
    assert active.band == "low"
    assert dormant.band == "high"
    assert active.risk < 0.05 < 0.95 < dormant.risk


@settings(max_examples=100, deadline=None)
@given(
    st.floats(0, 1000),
    st.integers(0, 500),
    st.integers(0, 50),
    st.floats(0, 100),
    st.integers(0, 50),
    st.integers(0, 10),
)
def test_risk_is_monotone_in_recency_frequency_and_errors(
    recency: float, frequency: int, errors: int, more_days: float, more_uses: int, more_errors: int
) -> None:
    """More days idle or more errors never lower risk; more activity (same errors) never raises it."""
    predictor = ChurnPredictor(
        intercept=-0.5, recency_weight=0.7, frequency_weight=1.3, error_weight=2.0
    )
    errors = min(errors, frequency)
    base = predictor.score(ActivityProfile("u", recency, frequency, errors)).risk
    assert (
        predictor.score(ActivityProfile("u", recency + more_days, frequency, errors)).risk >= base
    )
    assert (
        predictor.score(ActivityProfile("u", recency, frequency + more_uses, errors)).risk <= base
    )
    if frequency:
        worse = min(errors + more_errors, frequency)
        assert predictor.score(ActivityProfile("u", recency, frequency, worse)).risk >= base


def _held_out(
    predictor: ChurnPredictor, profiles: list[ActivityProfile], y: np.ndarray
) -> tuple[float, float]:
    """(AUC, mean log loss) of `predictor` on `profiles` with churn labels `y`."""
    scores = {s.subject: s.risk for s in predictor.score_many(profiles)}
    risk = np.array([scores[p.subject] for p in profiles])
    auc = sps.mannwhitneyu(risk[y], risk[~y]).statistic / (y.sum() * (~y).sum())
    loss = -np.mean(np.where(y, np.log(risk), np.log1p(-risk)))
    return float(auc), float(loss)


def test_fit_on_cdnow_beats_the_unfitted_model_on_held_out_customers() -> None:
    """Fitted (RFM) on the even 1997 customers, the model predicts the odd ones' 1998 churn better
    than the unfitted default weights and than the training churn rate, and the monetary term
    does not hurt."""
    tx = cdnow()
    as_of = dt.date(1998, 1, 1)
    history = tx.between(end=as_of)
    later = set(tx.between(start=as_of).customer_ids.tolist())
    profiles = ChurnPredictor.profiles(
        history.customer_ids, history.times, as_of=as_of, amounts=history.amounts
    )
    churned = np.array([p.subject not in later for p in profiles])
    train = np.array([int(p.subject) % 2 == 0 for p in profiles])
    fit_on = [p for p, t in zip(profiles, train, strict=True) if t]
    held_out = [p for p, t in zip(profiles, train, strict=True) if not t]
    y = churned[~train]
    fitted = ChurnPredictor().fit(fit_on, churned[train])
    weights = fitted.weights
    assert weights["recency"] > 0
    assert weights["frequency"] > 0
    assert weights["monetary"] > 0  # spending more lowers the risk in CDNOW
    fitted_auc, fitted_loss = _held_out(fitted, held_out, y)
    prior_auc, prior_loss = _held_out(ChurnPredictor(), held_out, y)
    rate = float(churned[train].mean())
    constant_loss = -float(np.mean(np.where(y, math.log(rate), math.log1p(-rate))))
    assert fitted_auc > 0.78
    assert fitted_auc > prior_auc
    assert fitted_loss < prior_loss - 0.3  # the default weights are badly calibrated here
    assert fitted_loss < constant_loss - 0.1
    no_money = [evolve(p, monetary=0.0) for p in profiles]
    rf = ChurnPredictor().fit(
        [p for p, t in zip(no_money, train, strict=True) if t], churned[train]
    )
    assert (
        fitted_loss
        <= _held_out(rf, [p for p, t in zip(no_money, train, strict=True) if not t], y)[1]
    )
    # A customer who bought last week, 12 times, scores low; one idle for 10 months, high.
    assert fitted.score(ActivityProfile("x", 7, 12, monetary=300.0)).band == "low"
    assert fitted.score(ActivityProfile("y", 300, 1, monetary=10.0)).band == "high"


def test_monetary_is_summed_from_amounts_and_lowers_risk() -> None:
    """`amounts=` fills `monetary` within the look-back; more spend never raises the risk."""
    profiles = ChurnPredictor.profiles(
        ["a", "a", "b"],
        [D(2024, 1, 1), D(2024, 4, 1), D(2024, 4, 20)],
        as_of=dt.date(2024, 5, 1),
        lookback=dt.timedelta(days=90),
        amounts=[100.0, 25.5, 10.0],
    )
    assert [p.monetary for p in profiles] == [25.5, 10.0]
    predictor = ChurnPredictor(monetary_weight=0.5)
    low, high = (predictor.score(ActivityProfile("u", 30, 3, monetary=m)).risk for m in (500, 5))
    assert low < high
    with pytest.raises(SpecValidationError) as info:
        ActivityProfile("u", 1.0, 1, monetary=-3.0)
    assert info.value.details["field"] == "monetary"


def test_profiles_from_an_activity_log() -> None:
    """Recency, frequency and errors are counted as of the reference time, within the look-back."""
    profiles = ChurnPredictor.profiles(
        ["a", "a", "a", "b", "b"],
        [D(2024, 1, 1), D(2024, 3, 1), D(2024, 5, 1), D(2024, 4, 20), D(2024, 4, 30)],
        as_of=dt.date(2024, 5, 1),
        failed=[False, True, False, True, True],
        lookback=dt.timedelta(days=90),
    )
    assert profiles == [ActivityProfile("a", 61.0, 1, 1), ActivityProfile("b", 1.0, 2, 2)]


def test_score_many_sorts_by_risk() -> None:
    """score_many returns the riskiest first."""
    scores = ChurnPredictor().score_many(
        [
            ActivityProfile("ok", 2, 20),
            ActivityProfile("gone", 200, 1),
            ActivityProfile("meh", 40, 3),
        ]
    )
    assert [s.subject for s in scores] == ["gone", "meh", "ok"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"recency_days": -1.0, "frequency": 1}, "recency_days"),
        ({"recency_days": 1.0, "frequency": -2}, "frequency"),
        ({"recency_days": 1.0, "frequency": 1, "errors": 1.5}, "errors"),
    ],
)
def test_bad_profiles_raise(kwargs: dict[str, float], field: str) -> None:
    """Negative or non-integer features raise SpecValidationError naming the field."""
    with pytest.raises(SpecValidationError) as info:
        ActivityProfile("u", **kwargs)  # type: ignore[arg-type]
    assert info.value.details["field"] == field


def test_negative_weights_and_one_class_labels_are_refused() -> None:
    """Weights that would break monotonicity and single-class training data raise."""
    with pytest.raises(SpecValidationError, match="recency_weight"):
        ChurnPredictor(recency_weight=-1.0)
    with pytest.raises(SpecValidationError, match="both churned and retained"):
        ChurnPredictor().fit([ActivityProfile("a", 1, 1), ActivityProfile("b", 2, 2)], [True, True])


# --------------------------------------------------------------------------- hypotheses


def test_declining_trend_becomes_a_recovery_idea() -> None:
    """A significant decline of a good metric yields one idea with linregress' evidence."""
    values = [100.0, 97.0, 95.5, 92.0, 90.0, 88.5, 85.0, 83.0, 80.5, 79.0, 76.0, 74.0]
    series = MetricSeries("weekly_active", tuple(f"w{i}" for i in range(12)), values)
    (idea,) = GrowthHypothesisGenerator().generate([series])
    fit = sps.linregress(np.arange(12.0), values)
    assert idea.signal == "declining_trend"
    assert idea.title == "Reverse the falling trend of weekly_active"
    assert idea.evidence["slope"] == pytest.approx(fit.slope, rel=1e-12)
    assert idea.evidence["p_value"] == pytest.approx(fit.pvalue, rel=1e-9)
    change = fit.slope * 11 / np.mean(values)
    assert idea.score == pytest.approx(1.5 * abs(change) * (1 - fit.pvalue), rel=1e-9)


def test_spike_of_a_cost_metric_is_bad_news() -> None:
    """For higher_is_better=False a spike is a problem to fix, scored with the modified z-score."""
    values = [5.0, 5.2, 4.9, 5.1, 5.0, 5.3, 4.8, 9.0]
    series = MetricSeries(
        "error_rate", tuple(str(i) for i in range(8)), values, higher_is_better=False
    )
    (idea,) = GrowthHypothesisGenerator(trend_window=20).generate([series])
    history = np.array(values[:7])
    med = np.median(history)
    mad = np.median(np.abs(history - med))
    assert idea.signal == "spike"
    assert idea.period == "7"
    assert idea.title == "Investigate and recover the spike of error_rate in 7"
    assert idea.evidence["modified_z"] == pytest.approx(0.6745 * (9.0 - med) / mad)


def test_cdnow_ideas_lead_with_the_acquisition_stop() -> None:
    """On CDNOW the top idea is the collapse of new customers in April 1997 (acquisition ended)."""
    metrics = cdnow().monthly_metrics()
    assert metrics["new_customers"].values.tolist()[:4] == [7846.0, 8476.0, 7248.0, 0.0]
    ideas = GrowthHypothesisGenerator().generate(metrics.values(), limit=5)
    top = ideas[0]
    assert (top.metric, top.signal, top.period) == ("new_customers", "drop", "1997-04")
    assert top.evidence["relative_change"] == -1.0
    assert top.evidence["periods"] == 3.0  # April to June, then the median itself is 0
    assert [i.score for i in ideas] == sorted((i.score for i in ideas), reverse=True)
    boosted = GrowthHypothesisGenerator(importance={"revenue": 10.0}).generate(
        metrics.values(), limit=1
    )
    assert boosted[0].metric == "revenue"


def test_generator_configuration_is_validated() -> None:
    """Windows and thresholds out of range raise SpecValidationError."""
    with pytest.raises(SpecValidationError) as info:
        GrowthHypothesisGenerator(trend_window=2)
    assert info.value.details["field"] == "trend_window"
    with pytest.raises(SpecValidationError, match="non-finite"):
        MetricSeries("m", ("a", "b"), [1.0, float("nan")])
