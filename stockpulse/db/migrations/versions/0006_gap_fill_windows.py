"""pipeline_run_batches.start/end hold a gap fill's exact window (ISO datetimes), not only days

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite cannot ALTER a column's type in place (it recreates the table).
    with op.batch_alter_table("pipeline_run_batches") as batch:
        for column in ("start", "end"):
            batch.alter_column(column, existing_type=sa.String(10), type_=sa.String(40), existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("pipeline_run_batches") as batch:
        for column in ("start", "end"):
            batch.alter_column(column, existing_type=sa.String(40), type_=sa.String(10), existing_nullable=False)
