"""alert rules hold what their kind needs: a threshold, an amount or a metric

Revision ID: 8b2f4c1d9e07
Revises: 51525d4bfdc5
Create Date: 2026-11-24 00:40:00

"""
from alembic import op

revision = "8b2f4c1d9e07"
down_revision = "51525d4bfdc5"
branch_labels = None
depends_on = None

CHECKS = (
    ("ck_alert_rule_has_threshold",
     "kind NOT IN ('usage', 'forecast', 'metric') OR threshold IS NOT NULL"),
    ("ck_alert_rule_has_amount", "kind NOT IN ('spend', 'credit') OR amount_minor IS NOT NULL"),
    ("ck_alert_rule_has_metric", "kind <> 'metric' OR metric IS NOT NULL"),
)


def upgrade():
    with op.batch_alter_table("alert_rule", schema=None) as batch_op:
        for name, condition in CHECKS:
            batch_op.create_check_constraint(name, condition)


def downgrade():
    with op.batch_alter_table("alert_rule", schema=None) as batch_op:
        for name, _ in CHECKS:
            batch_op.drop_constraint(name, type_="check")
