"""pipeline_run_batches.updated_at: the last sign of life of a batch, for the stale-run sweeper

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pipeline_run_batches") as batch:
        batch.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_pipeline_run_batches_status", "pipeline_run_batches", ["status"])


def downgrade() -> None:
    op.drop_index("ix_pipeline_run_batches_status", "pipeline_run_batches")
    with op.batch_alter_table("pipeline_run_batches") as batch:
        batch.drop_column("updated_at")
