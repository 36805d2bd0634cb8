"""trades, stream_fences, stream_gaps

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trades",
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("symbol", sa.String(24), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("trade_id", sa.String(64), nullable=False),
        sa.Column("price", sa.Float(), nullable=False),
        sa.Column("size", sa.Float(), nullable=False),
        sa.Column("conditions", sa.String(64)),
        sa.Column("exchange", sa.String(16)),
        sa.Column("ingested_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source", "symbol", "ts", "trade_id", name="pk_trades"),
    )
    op.create_index("ix_trades_symbol_ts", "trades", ["symbol", "ts"])
    op.create_table(
        "stream_fences",
        sa.Column("shard", sa.String(128), nullable=False),
        sa.Column("token", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("shard", name="pk_stream_fences"),
    )
    op.create_table(
        "stream_gaps",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("pipeline", sa.String(64), nullable=False),
        sa.Column("shard", sa.String(128), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("resolution", sa.String(32), nullable=False),
        sa.Column("backfill_run_id", sa.String(36)),
        sa.PrimaryKeyConstraint("id", name="pk_stream_gaps"),
    )
    op.create_index("ix_stream_gaps_pipeline_started", "stream_gaps", ["pipeline", "started_at"])


def downgrade() -> None:
    op.drop_index("ix_stream_gaps_pipeline_started", "stream_gaps")
    op.drop_table("stream_gaps")
    op.drop_table("stream_fences")
    op.drop_index("ix_trades_symbol_ts", "trades")
    op.drop_table("trades")
