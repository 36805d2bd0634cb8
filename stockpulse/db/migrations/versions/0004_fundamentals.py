"""company_profiles, financial_facts (+ financial_facts_latest view), sec_tickers

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# The newest filing of every (symbol, source, concept, unit, period): "latest" values, restatements applied.
LATEST_VIEW = """
CREATE VIEW financial_facts_latest AS
SELECT symbol, source, concept, unit, period_start, period_end, accession, fiscal_year, fiscal_period, form,
       filed, value, frame
FROM (
    SELECT f.*, ROW_NUMBER() OVER (PARTITION BY symbol, source, concept, unit, period_start, period_end
                                   ORDER BY filed DESC, accession DESC) AS newest
    FROM financial_facts f
) ranked
WHERE newest = 1
"""


def upgrade() -> None:
    op.create_table(
        "company_profiles",
        sa.Column("symbol", sa.String(24), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("name", sa.String(300)),
        sa.Column("exchange", sa.String(100)),
        sa.Column("currency", sa.String(8)),
        sa.Column("country", sa.String(64)),
        sa.Column("sector", sa.String(200)),
        sa.Column("industry", sa.String(200)),
        sa.Column("cik", sa.String(10)),
        sa.Column("market_cap", sa.Float()),
        sa.Column("shares_outstanding", sa.Float()),
        sa.Column("ipo_date", sa.String(10)),
        sa.Column("website", sa.Text()),
        sa.Column("description", sa.Text()),
        sa.Column("fiscal_year_end", sa.String(16)),
        sa.Column("as_of", sa.String(10)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("symbol", "source", name="pk_company_profiles"),
    )
    op.create_table(
        "financial_facts",
        sa.Column("symbol", sa.String(24), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("concept", sa.String(200), nullable=False),
        sa.Column("unit", sa.String(32), nullable=False),
        sa.Column("period_start", sa.String(10), nullable=False),
        sa.Column("period_end", sa.String(10), nullable=False),
        sa.Column("accession", sa.String(32), nullable=False),
        sa.Column("fiscal_year", sa.Integer()),
        sa.Column("fiscal_period", sa.String(8)),
        sa.Column("form", sa.String(16)),
        sa.Column("filed", sa.String(10), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("frame", sa.String(16)),
        sa.Column("ingested_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("symbol", "source", "concept", "unit", "period_start", "period_end", "accession",
                                name="pk_financial_facts"),
    )
    op.create_index("ix_financial_facts_symbol_concept", "financial_facts", ["symbol", "concept", "period_end"])
    op.execute(LATEST_VIEW)
    op.create_table(
        "sec_tickers",
        sa.Column("ticker", sa.String(24), nullable=False),
        sa.Column("cik", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(300)),
        sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("ticker", name="pk_sec_tickers"),
    )


def downgrade() -> None:
    op.drop_table("sec_tickers")
    op.execute("DROP VIEW financial_facts_latest")
    op.drop_index("ix_financial_facts_symbol_concept", "financial_facts")
    op.drop_table("financial_facts")
    op.drop_table("company_profiles")
