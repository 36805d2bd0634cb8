"""pipeline_runs.trace_id: the run's OpenTelemetry trace

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pipeline_runs") as batch:
        batch.add_column(sa.Column("trace_id", sa.String(32)))
    op.create_index("ix_pipeline_runs_trace", "pipeline_runs", ["trace_id"])


def downgrade() -> None:
    op.drop_index("ix_pipeline_runs_trace", table_name="pipeline_runs")
    with op.batch_alter_table("pipeline_runs") as batch:
        batch.drop_column("trace_id")
