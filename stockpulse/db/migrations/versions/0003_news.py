"""news_articles, news_article_sources, news_symbols

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "news_articles",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("canonical_url", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("publisher", sa.String(200), nullable=True),
        sa.Column("author", sa.String(200), nullable=True),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("language", sa.String(16), nullable=True),
        sa.Column("first_provider", sa.String(32), nullable=False),
        sa.Column("ingested_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_news_articles"),
    )
    op.create_index("ix_news_articles_published_at", "news_articles", ["published_at"])
    op.create_table(
        "news_article_sources",
        sa.Column("article_id", sa.String(32), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("provider_id", sa.String(200), nullable=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("pipeline", sa.String(64), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["article_id"], ["news_articles.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("article_id", "provider", name="pk_news_article_sources"),
    )
    op.create_table(
        "news_symbols",
        sa.Column("article_id", sa.String(32), nullable=False),
        sa.Column("symbol", sa.String(24), nullable=False),
        sa.Column("sentiment_score", sa.Float(), nullable=True),
        sa.Column("sentiment_label", sa.String(32), nullable=True),
        sa.Column("relevance_score", sa.Float(), nullable=True),
        sa.Column("sentiment_provider", sa.String(32), nullable=True),
        sa.ForeignKeyConstraint(["article_id"], ["news_articles.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("article_id", "symbol", name="pk_news_symbols"),
    )
    op.create_index("ix_news_symbols_symbol", "news_symbols", ["symbol"])


def downgrade() -> None:
    op.drop_index("ix_news_symbols_symbol", "news_symbols")
    op.drop_table("news_symbols")
    op.drop_table("news_article_sources")
    op.drop_index("ix_news_articles_published_at", "news_articles")
    op.drop_table("news_articles")
