"""covering index on usage rollups by tenant, metric and day

Replaces the (tenant_id, metric, day) index with one that also holds the service,
the user and both quantities, so that a metric's rollups of a span of days are read
from the index alone, in order.

Revision ID: 71326d1002f5
Revises: 8b2f4c1d9e07
Create Date: 2026-11-24 02:36:00.125961

"""
from alembic import op

revision = "71326d1002f5"
down_revision = "8b2f4c1d9e07"
branch_labels = None
depends_on = None

COLUMNS = ["tenant_id", "metric", "day", "service", "user_ref", "quantity_micro", "event_count"]


def upgrade():
    op.create_index("ix_usage_rollup_tenant_metric_day_covering", "usage_rollup", COLUMNS,
                    unique=False)
    op.drop_index("ix_usage_rollup_tenant_metric_day", table_name="usage_rollup")


def downgrade():
    op.create_index("ix_usage_rollup_tenant_metric_day", "usage_rollup",
                    ["tenant_id", "metric", "day"], unique=False)
    op.drop_index("ix_usage_rollup_tenant_metric_day_covering", table_name="usage_rollup")
