"""usage rollups keyed in read order, monthly rollups of summed metrics, and daily
rollups per service

``usage_rollup`` loses its surrogate id: its key (tenant, metric, day, service, user)
becomes the primary key, holding the quantities on PostgreSQL and making the table
itself on SQLite (no rowid), in place of the unique constraint and the covering
index. ``usage_rollup_month`` adds up the summed metrics' days per calendar month and
``usage_rollup_service`` every metric's users per day and service, up to
``usage_compaction.through``; they start empty and the compaction job fills them.

Revision ID: 4e9b7c2a5d10
Revises: 71326d1002f5
Create Date: 2026-11-24 05:20:00.000000

"""
import sqlalchemy as sa
from alembic import op

revision = "4e9b7c2a5d10"
down_revision = "71326d1002f5"
branch_labels = None
depends_on = None

METRIC_CHECK = ("metric in ('llm_tokens', 'sql_queries', 'storage_gb', 'api_requests', "
                "'compute_hours')")
SUMMED_METRIC_CHECK = "metric in ('llm_tokens', 'sql_queries', 'api_requests', 'compute_hours')"
DATA = ["tenant_id", "day", "metric", "service", "user_ref", "quantity_micro", "event_count"]
KEY = ["tenant_id", "metric", "day", "service", "user_ref"]
QUANTITIES = ["quantity_micro", "event_count"]


def _quantity_columns():
    return [sa.Column("service", sa.String(length=64), nullable=False),
            sa.Column("user_ref", sa.String(length=128), nullable=False),
            sa.Column("quantity_micro", sa.BigInteger(), nullable=False),
            sa.Column("event_count", sa.BigInteger(), nullable=False),
            sa.Column("tenant_id", sa.Integer(), nullable=False)]


def _copy_into(table: str) -> None:
    columns = ", ".join(DATA)
    op.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM usage_rollup")
    op.drop_table("usage_rollup")
    op.rename_table(table, "usage_rollup")


def upgrade():
    op.create_table(
        "usage_rollup_keyed",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("metric", sa.String(length=32), nullable=False),
        *_quantity_columns(),
        sa.CheckConstraint(METRIC_CHECK, name="ck_usage_rollup_metric"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenant.id"], ondelete="RESTRICT",
                                name="usage_rollup_tenant_id_fkey"),
        sa.PrimaryKeyConstraint(*KEY, name="pk_usage_rollup", postgresql_include=QUANTITIES),
        sqlite_with_rowid=False,
    )
    _copy_into("usage_rollup_keyed")
    op.create_table(
        "usage_rollup_month",
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("metric", sa.String(length=32), nullable=False),
        *_quantity_columns(),
        sa.CheckConstraint(SUMMED_METRIC_CHECK, name="ck_usage_rollup_month_metric"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenant.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("tenant_id", "metric", "month", "service", "user_ref",
                                name="pk_usage_rollup_month", postgresql_include=QUANTITIES),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "usage_rollup_service",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("metric", sa.String(length=32), nullable=False),
        sa.Column("service", sa.String(length=64), nullable=False),
        sa.Column("quantity_micro", sa.BigInteger(), nullable=False),
        sa.Column("event_count", sa.BigInteger(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.CheckConstraint(METRIC_CHECK, name="ck_usage_rollup_service_metric"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenant.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("tenant_id", "metric", "day", "service",
                                name="pk_usage_rollup_service", postgresql_include=QUANTITIES),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "usage_compaction",
        sa.Column("through", sa.Date(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenant.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_usage_compaction"),
    )


def downgrade():
    op.drop_table("usage_compaction")
    op.drop_table("usage_rollup_service")
    op.drop_table("usage_rollup_month")
    op.create_table(
        "usage_rollup_with_id",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("metric", sa.String(length=32), nullable=False),
        *_quantity_columns(),
        sa.CheckConstraint(METRIC_CHECK, name="ck_usage_rollup_metric"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenant.id"], ondelete="RESTRICT",
                                name="usage_rollup_tenant_id_fkey"),
        sa.PrimaryKeyConstraint("id", name="usage_rollup_pkey"),
        sa.UniqueConstraint("tenant_id", "day", "metric", "service", "user_ref",
                            name="uq_usage_rollup_key"),
    )
    _copy_into("usage_rollup_with_id")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER SEQUENCE usage_rollup_with_id_id_seq RENAME TO usage_rollup_id_seq")
    op.create_index("ix_usage_rollup_tenant_metric_day_covering", "usage_rollup",
                    KEY + QUANTITIES, unique=False)
