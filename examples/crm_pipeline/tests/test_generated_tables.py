"""The committed `generated/tables.py` migrates with Alembic, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from crm_pipeline.generated import tables
from sqlalchemy.ext.asyncio import AsyncSession

from contractspec.core.testing import postgres_dsn, temporary_sql_engine
from contractspec.core.testing.migrations import (
    downgrade_and_check,
    metadata_from_config,
    migrate_and_check,
    titled_block,
)

DOCS = Path(__file__).resolve().parents[3] / "docs" / "core" / "sql.md"
CORE_HOOK = "from contractspec.core.sql import alembic_render_item  # ContractSpec\n"
#: The docs' env.py with the generated module's `render_item` hook and target metadata.
ENV_PY = metadata_from_config(
    titled_block(DOCS, "migrations/env.py").replace(
        CORE_HOOK, "from crm_pipeline.generated.tables import alembic_render_item\n"
    ),
    "from myapp.db import target_metadata",
)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_generated_tables_autogenerate_upgrade_check_serve_and_downgrade(
    kind: str, tmp_path: Path
) -> None:
    """The migration writes the generated types in full with their import, applies with no diff,
    stores and reads a deal exactly (scaled decimal, enum value, UTC datetime), and rolls back."""
    assert "crm_pipeline.generated.tables import" in ENV_PY  # the hook line was replaced
    if kind == "postgres" and not postgres_dsn():
        pytest.skip("PostgreSQL tests need CONTRACTSPEC_TEST_POSTGRES_DSN")
    async with temporary_sql_engine(kind, tmp_path) as engine:
        directory = tmp_path / "migrations"
        env = await migrate_and_check(engine, directory, [tables.Base.metadata], env_py=ENV_PY)
        (migration,) = (path.read_text() for path in directory.glob("versions/*.py"))
        assert "import crm_pipeline.generated.tables\n" in migration
        for rendered in (
            "DecimalType(max_digits=12, decimal_places=2)",
            "EnumValue(integer=False, length=16)",
            "UtcDateTime()",
        ):
            assert f"crm_pipeline.generated.tables.{rendered}" in migration

        created = datetime(2024, 6, 1, 12, 30, tzinfo=UTC)
        async with AsyncSession(engine) as session:  # no create_all: the migration made it
            session.add(
                tables.CrmDeal(
                    org_id="o1", id="d1", contact_id="c1", title="Big",
                    amount=Decimal("1200.50"), stage="lead", opened_on=date(2024, 6, 1),
                    opened_month="2024-06", closed_on=None, created_at=created,
                )
            )  # fmt: skip
            await session.commit()
        async with AsyncSession(engine) as session:
            deal = await session.get(tables.CrmDeal, ("o1", "d1"))
            assert deal is not None
            assert (deal.amount, deal.stage, deal.created_at) == (
                Decimal("1200.50"),
                "lead",
                created,
            )

        await downgrade_and_check(env, engine)
