"""data_quality_findings: what the transform stage's data-quality checks found

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "data_quality_findings",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("found_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pipeline", sa.String(64), nullable=False),
        sa.Column("data_type", sa.String(32), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("batch_no", sa.Integer, nullable=False),
        sa.Column("check", sa.String(64), nullable=False),
        sa.Column("severity", sa.String(8), nullable=False),
        sa.Column("symbol", sa.String(64)),
        sa.Column("record_key", sa.String(200), nullable=False),
        sa.Column("details", sa.JSON, nullable=False),
        sa.UniqueConstraint("run_id", "batch_no", "check", "record_key"),
    )
    op.create_index("ix_quality_pipeline_found", "data_quality_findings", ["pipeline", "found_at"])


def downgrade() -> None:
    op.drop_index("ix_quality_pipeline_found", table_name="data_quality_findings")
    op.drop_table("data_quality_findings")
