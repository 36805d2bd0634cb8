from __future__ import annotations

import pytest

from stockpulse.datatypes.news import NEWS, article_id, canonical_url, html_to_text


@pytest.mark.parametrize(("url", "expected"), [
    ("https://news.example.com/a/b", "https://news.example.com/a/b"),
    ("HTTPS://NEWS.Example.com:443/a/b?utm_source=polygon&utm_medium=api", "https://news.example.com/a/b"),
    ("https://news.example.com/a/b?.tsrc=rss", "https://news.example.com/a/b"),
    ("https://news.example.com/a/b?b=2&fbclid=x&a=1#comments", "https://news.example.com/a/b?a=1&b=2"),
    ("http://example.com:80", "http://example.com/"),
])
def test_canonical_url(url: str, expected: str) -> None:
    assert canonical_url(url) == expected


def test_the_same_story_from_different_providers_has_one_id() -> None:
    ids = {article_id(u) for u in ("https://news.example.com/x/1", "https://NEWS.example.com/x/1?utm_campaign=av",
                                   "https://news.example.com/x/1?.tsrc=rss#top")}
    assert len(ids) == 1
    assert article_id("https://news.example.com/x/1?page=2") not in ids  # a real parameter is kept


@pytest.mark.parametrize(("raw", "text"), [
    ("Apple&#8217;s <b>new</b> chip &amp; more", "Apple’s new chip & more"),
    ("&lt;p&gt;Escaped &amp;amp; twice&lt;/p&gt;", "Escaped & twice"),
    ("<p>one</p><p>two</p><script>alert(1)</script>", "one two"),
    ("plain   text\n with  spaces", "plain text with spaces"),
    ("<br/>", None),
    (None, None),
])
def test_html_is_reduced_to_text(raw: str | None, text: str | None) -> None:
    assert html_to_text(raw) == text


def record(**overrides: object) -> dict:
    base = {"provider": "finnhub", "provider_id": "1", "url": "https://news.example.com/x/1",
            "title": "Title &amp; <i>more</i>", "summary": "<p>Sum</p>", "publisher": "Reuters", "author": None,
            "published_at": "2024-01-02T13:00:00-05:00", "language": None, "symbols": [{"symbol": "AAPL"}]}
    base.update(overrides)
    return base


def test_valid_articles_are_canonical_and_bad_ones_get_a_reason() -> None:
    result = NEWS.validate([
        record(),
        record(url=None),
        record(url="https://news.example.com/x/2", published_at=None),
        record(url="https://news.example.com/x/3", published_at="2024-01-02T13:00:00"),
        record(url="https://news.example.com/x/4", published_at="sometime yesterday"),
        record(url="ftp://news.example.com/x/5"),
        record(url="https://news.example.com/x/6", title="<br/>"),
        record(url="https://news.example.com/x/7", symbols=[{"symbol": "not a ticker"}]),
    ])
    [article] = result.valid
    assert article["title"] == "Title & more" and article["summary"] == "Sum"
    assert article["published_at"].isoformat() == "2024-01-02T18:00:00+00:00"
    assert article["id"] == article_id("https://news.example.com/x/1")
    reasons = [r.reason for r in result.rejected]
    assert reasons[0] == "url: article has no URL"
    assert reasons[1] == "published_at: article has no timestamp"
    assert reasons[2] == "published_at: Not a valid aware datetime."
    assert "published_at" in reasons[3] and "datetime" in reasons[3].lower()
    assert reasons[4].startswith("url:")
    assert reasons[5] == "title: title is empty once its HTML is removed"
    assert reasons[6].startswith("symbols:") and "invalid symbol" in reasons[6]


def test_one_article_twice_in_a_payload_is_merged_with_both_symbols() -> None:
    result = NEWS.validate([record(symbols=[{"symbol": "AAPL"}]),
                            record(url="https://news.example.com/x/1?utm_source=x",
                                   symbols=[{"symbol": "MSFT", "sentiment_score": 0.4}])])
    assert result.rejected == []
    [article] = result.valid
    assert sorted(s["symbol"] for s in article["symbols"]) == ["AAPL", "MSFT"]
    assert next(s for s in article["symbols"] if s["symbol"] == "MSFT")["sentiment_score"] == 0.4


# ------------------------------------------------------------------------------------------ quality checks


def quality(records: list[dict], conn: object = None) -> dict[str, list[tuple[int, str, str]]]:
    from datetime import UTC, datetime

    from stockpulse.config import PipelineSettings
    from stockpulse.quality import run_checks
    from stockpulse.universes import Universe

    valid = NEWS.validate(records).valid
    pipe = PipelineSettings("n", "news", "finnhub", Universe("u", tickers=("AAPL",)))
    result = run_checks(NEWS.quality_checks, valid, pipe, conn, NEWS.key_of or (lambda r: (r["id"], r["provider"])),
                        first_record_no=0, now=datetime(2024, 1, 3, tzinfo=UTC))
    out: dict[str, list[tuple[int, str, str]]] = {}
    for f in result.findings:
        out.setdefault(f.check, []).append((f.index, f.severity, f.details["reason"]))
    return out


def test_placeholders_future_articles_and_duplicates_in_a_payload() -> None:
    found = quality([
        record(),
        record(provider_id="2", url="https://news.example.com/x/1?utm_medium=feed"),  # the same article again
        record(provider_id="3", url="https://News.example.com/"),
        record(provider_id="4", url="https://news.example.com/x/4", published_at="1970-01-01T00:00:00Z"),
        record(provider_id="5", url="https://news.example.com/x/5", published_at="2024-01-03T05:00:00+00:00"),
        record(provider_id="6", url="https://news.example.com/x/6", published_at="2024-01-03T00:04:00+00:00"),
    ])
    assert found == {
        "missing_url_time": [(1, "error", "url https://News.example.com/ is a home page, not an article"),
                             (2, "error", "published_at 1970-01-01T00:00:00+00:00 is a placeholder (before "
                                          "1995-01-01)")],
        "published_in_future": [(3, "warn", "published_at 2024-01-03T05:00:00+00:00 is 300 minutes in the future")],
        "duplicate_url": [(0, "warn", "finnhub item 1 is the same article as 2")],
    }


def test_an_article_stored_under_another_id_of_the_same_provider_is_a_duplicate(database: str) -> None:
    from stockpulse.datatypes.news import load
    from stockpulse.db.engine import get_engine

    with get_engine().begin() as conn:
        load(conn, [NEWS.from_row(r) for r in NEWS.rows(NEWS.validate([record()]).valid)], pipeline="n")
    with get_engine().connect() as conn:
        assert quality([record()], conn) == {}  # the same item again (a re-run): no finding
        found = quality([record(provider_id="99"), record(provider="polygon", provider_id="p1")], conn)
    assert found == {"duplicate_url": [(0, "warn", "finnhub item 99 is the same article as 1 (stored)")]}
