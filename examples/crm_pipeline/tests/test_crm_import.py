"""The CRM example imports real CDNOW purchases through the runtime and reports correct totals."""

from __future__ import annotations

from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path

import pytest
from crm_pipeline.main import (
    OPEN_FROM,
    OPEN_LEAD,
    ORG_ID,
    THANK_YOU_ABOVE,
    Purchase,
    Tally,
    data_file,
    read_purchases,
    run,
)
from crm_pipeline.models import Stage

from contractspec.core.testing import postgres_dsn, temporary_sql_engine

DATA = data_file()
pytestmark = pytest.mark.skipif(not DATA.is_file(), reason=f"CDNOW data not found at {DATA}")

LIMIT = 3000


def expected(purchases: list[Purchase]) -> dict[str, object]:
    """The report computed directly from the file, independently of the CRM code."""
    stages: Counter[str] = Counter()
    values: defaultdict[str, Decimal] = defaultdict(Decimal)
    won_by_customer: defaultdict[str, Decimal] = defaultdict(Decimal)
    months: Counter[str] = Counter()
    for p in purchases:
        if p.day >= OPEN_LEAD:
            stage = "lead"
        elif p.day >= OPEN_FROM:
            stage = "qualified"
        else:
            stage = "won" if p.value > 0 else "lost"
        stages[stage] += 1
        values[stage] += p.value
        months[p.day.strftime("%Y-%m")] += 1
        if stage == "won":
            won_by_customer[f"cdnow-{p.customer_id}"] += p.value
    top = sorted(won_by_customer.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    thank_you = sum(1 for p in purchases if p.day < OPEN_FROM and p.value > THANK_YOU_ABOVE)
    return {
        "stages": stages,
        "values": values,
        "top": top,
        "months": months,
        "thank_you": thank_you,
    }


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_import_matches_an_independent_computation(kind: str, tmp_path: Path) -> None:
    """Stage counts and values, top customers and monthly deals equal a direct computation."""
    if kind == "postgres" and not postgres_dsn():
        pytest.skip("PostgreSQL tests need CONTRACTSPEC_TEST_POSTGRES_DSN")
    purchases = read_purchases(DATA, LIMIT)
    want = expected(purchases)
    async with temporary_sql_engine(kind, tmp_path) as engine:
        stats, summary, verified = await run(
            engine, purchases, show_progress=False, commit_every=250
        )
    assert stats.failures == 0, stats.errors
    assert (verified.ok, verified.org_id, verified.reason) == (True, ORG_ID, None)
    assert verified.checked == stats.calls == stats.committed.calls
    assert stats.pending == Tally()
    assert (stats.skipped, stats.resumed, stats.settled) == (0, 0, LIMIT)
    assert stats.purchases == LIMIT
    assert stats.contacts == len({p.customer_id for p in purchases})
    assert summary.deals == LIMIT
    assert {s.stage.value: s.deals for s in summary.stages if s.deals} == dict(want["stages"])  # type: ignore[call-overload]
    assert {s.stage.value: s.value for s in summary.stages if s.deals} == dict(want["values"])  # type: ignore[call-overload]
    assert [(c.contact_id, c.won_value) for c in summary.top_customers] == want["top"]
    assert {m.month: m.deals for m in summary.monthly_new_deals} == dict(want["months"])  # type: ignore[call-overload]
    stages = want["stages"]
    assert isinstance(stages, Counter)
    won, lost = stages["won"], stages["lost"]
    assert summary.win_rate == pytest.approx(won / (won + lost))
    creates = LIMIT + stats.contacts
    moves = sum(1 for p in purchases if p.day < OPEN_LEAD) + sum(
        1 for p in purchases if p.day < OPEN_FROM
    )
    assert stats.calls == creates + moves + 2 * int(want["thank_you"])  # type: ignore[call-overload]
    assert Stage.WON in {s.stage for s in summary.stages}


def test_malformed_lines_are_reported_with_their_number(tmp_path: Path) -> None:
    """A malformed data line stops the import with the file, the line number and the reason."""
    bad = tmp_path / "bad.txt"
    bad.write_text(" 00001 19970101  1   11.77\n 00002 1997013x  1   12.00\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: "):
        read_purchases(bad)
