"""News end to end: simulator -> real worker -> database, for each provider, with cross-provider dedup."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
import requests

from tests.conftest import Stack, table_rows

pytestmark = pytest.mark.integration
START, END = date(2024, 1, 1), date(2024, 1, 5)
DAYS = (END - START).days + 1
SYMBOLS = 3  # test_equities: AAPL, MSFT, IBM


def snapshot() -> dict[str, list]:
    return {name: sorted(tuple(v for k, v in row._mapping.items() if k not in ("ingested_at", "first_seen_at"))
                         for row in table_rows(name))
            for name in ("news_articles", "news_article_sources", "news_symbols")}


def test_each_provider_loads_the_same_stories_once_and_reruns_change_nothing(clean_stack: Stack) -> None:
    finnhub = clean_stack.run("finnhub_news", start=START, end=END)
    assert finnhub.status == "succeeded", finnhub.error_message
    assert finnhub.records_loaded == 2 * DAYS * SYMBOLS
    articles = table_rows("news_articles")
    assert len(articles) == 2 * DAYS * SYMBOLS
    assert {a.first_provider for a in articles} == {"finnhub"}
    assert all(a.published_at.tzinfo is not None and "<" not in (a.summary or "") for a in articles)

    polygon = clean_stack.run("polygon_news", start=START, end=END)
    av = clean_stack.run("alphavantage_news", start=START, end=END)
    assert (polygon.status, av.status) == ("succeeded", "succeeded")
    # The same stories under three URL spellings: still one article each, seen by three providers.
    assert len(table_rows("news_articles")) == 2 * DAYS * SYMBOLS
    sources = table_rows("news_article_sources")
    assert len(sources) == 3 * 2 * DAYS * SYMBOLS
    assert {s.provider for s in sources} == {"finnhub", "polygon", "alphavantage"}
    links = table_rows("news_symbols")
    assert len(links) == 2 * DAYS * SYMBOLS
    # Finnhub gives no sentiment; Polygon's label came next and stays (the first provider's sentiment wins).
    assert {link.sentiment_provider for link in links} == {"polygon"}
    assert all(link.sentiment_label in ("positive", "negative", "neutral") for link in links)
    assert all(link.relevance_score is not None for link in links)  # filled in from Alpha Vantage

    before = snapshot()
    again = [clean_stack.run(p, start=START, end=END) for p in ("finnhub_news", "polygon_news", "alphavantage_news")]
    assert [r.status for r in again] == ["succeeded"] * 3
    assert snapshot() == before


def test_incremental_runs_start_at_the_watermark(clean_stack: Stack, sim) -> None:
    from stockpulse.pipeline.runs import get_run

    first = clean_stack.run("finnhub_news", start=START, end=END)
    marks = {w.symbol: w.last_ts for w in table_rows("watermarks") if w.pipeline == "finnhub_news"}
    assert set(marks) == {"AAPL", "MSFT", "IBM"} and all(m.date() == END for m in marks.values())
    newest = max(a.published_at for a in table_rows("news_articles"))
    assert max(marks.values()) == newest
    later = clean_stack.run("finnhub_news", end=date(2024, 1, 10))  # no start: from the watermark - overlap
    assert later.status == "succeeded" and get_run(later.id).params["start"] is None
    batches = [b for b in table_rows("pipeline_run_batches") if b.run_id == later.id]
    assert {b.start for b in batches} == {(END - timedelta(days=1)).isoformat()}  # overlap_days: 1
    assert len(table_rows("news_articles")) == 2 * 10 * SYMBOLS
    assert first.records_loaded == 2 * DAYS * SYMBOLS


def test_rss_feed_items_without_link_or_date_are_quarantined_and_the_rest_load(clean_stack: Stack, sim) -> None:
    today = datetime.now(UTC)
    feed = ("<?xml version='1.0'?><rss version='2.0'><channel><title>Newsroom</title>"
            f"<item><title>Good &amp; fine</title><link>https://newsroom.example.com/a</link>"
            f"<pubDate>{today:%a, %d %b %Y} 08:00:00 GMT</pubDate></item>"
            "<item><title>No link</title><pubDate>Mon, 30 Nov 2026 08:00:00 GMT</pubDate></item>"
            "<item><title>No date</title><link>https://newsroom.example.com/b</link></item>"
            "</channel></rss>")
    requests.post(f"{sim.url}/_sim/feeds", json={"path": "/feeds/newsroom.xml", "body": feed},
                  timeout=5).raise_for_status()
    clean_stack.restart_worker(STOCKPULSE_PROVIDERS__RSS__OPTIONS__FEEDS='["/rss/2.0/headline?s={symbol}", '
                                                                        '"/feeds/newsroom.xml"]')
    run = clean_stack.run("rss_news", start=today.date() - timedelta(days=7), end=today.date())
    assert run.status == "partial" and run.records_rejected == 2
    reasons = sorted(q.reason for q in table_rows("quarantine"))
    assert reasons == ["published_at: article has no timestamp", "url: article has no URL"]
    titles = {a.title for a in table_rows("news_articles")}
    assert "Good & fine" in titles and len(titles) > 10  # the Yahoo headlines of three symbols too
