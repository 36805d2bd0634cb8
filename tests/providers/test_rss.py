from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import requests

from stockpulse.datatypes.news import NEWS, canonical_url
from stockpulse.errors import PermanentError
from tests.providers.helpers import fetch

TODAY = datetime.now(UTC).date()


def rss(sim_url: str, feeds: list[str], symbols: tuple[str, ...] = ("AAPL",), days: int = 7) -> list[dict]:
    records, _ = fetch("rss", sim_url, symbols, TODAY - timedelta(days=days), TODAY, data_type="news",
                       options={"feeds": feeds})
    return records


def serve(sim_url: str, path: str, body: str, **extra: str) -> str:
    requests.post(f"{sim_url}/_sim/feeds", json={"path": path, "body": body, **extra}, timeout=5).raise_for_status()
    return path


YAHOO = "/rss/2.0/headline?s={symbol}&region=US&lang=en-US"


def test_yahoo_headline_feed_per_symbol(sim_url: str, sim) -> None:
    records = rss(sim_url, [YAHOO], ("AAPL", "MSFT"))
    result = NEWS.validate(records)
    assert result.rejected == [] and len(result.valid) == len(records) > 10
    article = result.valid[0]
    assert article["provider"] == "rss" and article["language"] == "en-US"
    assert article["publisher"].startswith("Yahoo! Finance")
    assert "&amp;" not in article["title"] and "<b>" not in (article["summary"] or "")
    assert "tsrc" not in article["canonical_url"] and article["canonical_url"] == canonical_url(article["url"])
    assert any(a["summary"] is None for a in result.valid)  # some items have no description
    assert {a["symbols"][0]["symbol"] for a in result.valid} == {"AAPL", "MSFT"}


ODD_FEED = """<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>Odd &amp; Co newsroom</title>
<item><title>No link here</title><pubDate>Mon, 30 Nov 2026 10:00:00 +0000</pubDate></item>
<item><title>No date here</title><link>https://odd.example.com/no-date</link></item>
<item><title>Eastern time &#8211; EST</title><link>https://odd.example.com/est</link>
  <pubDate>{est}</pubDate></item>
<item><title>ISO date</title><link>https://odd.example.com/iso?utm_source=rss</link><pubDate>{iso}</pubDate></item>
<item><title>Unreadable date</title><link>https://odd.example.com/bad-date</link><pubDate>sometime yesterday</pubDate></item>
<item><title><![CDATA[Caf&eacute; <b>bold</b> &amp; &#8220;quoted&#8221;]]></title><link>https://odd.example.com/cdata</link>
  <description>&lt;p&gt;Double &amp;amp; escaped&lt;/p&gt;</description><pubDate>{iso}</pubDate></item>
<item><title>Too old</title><link>https://odd.example.com/old</link><pubDate>Mon, 02 Jan 2006 10:00:00 GMT</pubDate></item>
</channel></rss>"""


def test_items_with_missing_fields_odd_dates_and_entities(sim_url: str, sim) -> None:
    yesterday = datetime.now(UTC) - timedelta(days=1)
    body = ODD_FEED.format(est=yesterday.strftime("%a, %d %b %Y 09:30:00 EST"),
                           iso=yesterday.strftime("%Y-%m-%dT%H:%M:%S+02:00"))
    records = rss(sim_url, [serve(sim_url, "/feeds/odd.xml", body)])
    assert len(records) == 6  # the 2006 item is outside the run's dates, left for the run that covers it
    result = NEWS.validate(records)
    by_title = {a["title"]: a for a in result.valid}
    assert by_title["Eastern time – EST"]["published_at"].hour == 14  # 09:30 EST = 14:30 UTC
    assert by_title["ISO date"]["canonical_url"] == "https://odd.example.com/iso"
    assert "Café bold & “quoted”" in by_title
    assert by_title["Café bold & “quoted”"]["summary"] == "Double & escaped"
    assert by_title["Eastern time – EST"]["symbols"] == []  # a feed without {symbol} links no symbol
    reasons = sorted(r.reason for r in result.rejected)
    assert reasons == ["published_at: Not a valid datetime.", "published_at: article has no timestamp",
                       "url: article has no URL"]


SEC_ATOM = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Latest Filings</title>
<entry><title>4 - Soci\xe9t\xe9 Example (0001045810) (Reporting)</title>
 <link rel="alternate" type="text/html" href="https://www.sec.gov/Archives/edgar/data/1045810/000104581026000001/0001045810-26-000001-index.htm"/>
 <summary type="html">&lt;b&gt;Filed:&lt;/b&gt; 2026-05-05 &lt;b&gt;AccNo:&lt;/b&gt; 0001045810-26-000001</summary>
 <updated>{updated}</updated><category scheme="https://www.sec.gov/" label="form type" term="4"/>
 <id>urn:tag:sec.gov,2008:accession-number=0001045810-26-000001</id></entry>
<entry><title>4 - Soci\xe9t\xe9 Example (0001045810) (Issuer)</title>
 <link rel="alternate" type="text/html" href="https://www.sec.gov/Archives/edgar/data/1045810/000104581026000001/0001045810-26-000001-index.htm"/>
 <summary type="html">&lt;b&gt;Filed:&lt;/b&gt; 2026-05-05</summary>
 <updated>{updated}</updated><id>urn:tag:sec.gov,2008:accession-number=0001045810-26-000001</id></entry>
</feed>"""


def test_sec_atom_one_article_per_accession_in_its_declared_encoding(sim_url: str, sim) -> None:
    updated = (datetime.now(UTC) - timedelta(hours=3)).astimezone().strftime("%Y-%m-%dT%H:%M:%S-04:00")
    path = serve(sim_url, "/feeds/sec.atom", SEC_ATOM.format(updated=updated), encoding="iso-8859-1",
                 content_type="application/atom+xml")
    records = rss(sim_url, [path])
    assert len(records) == 2
    result = NEWS.validate(records)
    [filing] = result.valid  # the (Reporting) and (Issuer) entries of one filing are one article
    assert filing["title"] == "4 - Société Example (0001045810) (Reporting)"
    assert filing["provider_id"] == "urn:tag:sec.gov,2008:accession-number=0001045810-26-000001"
    assert filing["summary"].startswith("Filed: 2026-05-05")


def test_an_html_page_instead_of_a_feed_is_permanent(sim_url: str, sim) -> None:
    path = serve(sim_url, "/feeds/blocked.xml", "<html><head><title>Your Request Originates from an Undeclared "
                 "Automated Tool</title></head><body>blocked</body></html>", content_type="text/html")
    with pytest.raises(PermanentError, match="did not answer with an RSS or Atom feed"):
        rss(sim_url, [path])


def test_no_feed_configured_is_a_clear_error(sim_url: str, sim) -> None:
    with pytest.raises(PermanentError, match="options.feeds lists no feed"):
        rss(sim_url, [])
