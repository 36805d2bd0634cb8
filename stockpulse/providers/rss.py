"""RSS 2.0 and Atom news feeds listed in config, parsed with feedparser.

``options.feeds`` lists feed URLs or paths (relative to ``base_url``); ``{symbol}`` in one makes it a
per-symbol feed whose items concern that symbol, e.g. Yahoo Finance's headline feed
``/rss/2.0/headline?s={symbol}&region=US&lang=en-US``. A feed without ``{symbol}`` (SEC EDGAR's latest
filings in Atom, a newsroom) is read once per batch and its items link to no symbol. Feeds hold a window
of recent items, so items outside the run's dates are left for the run that covers them; an item without
a link or a date goes to quarantine with the reason. SEC asks for a descriptive ``user_agent`` with
contact details; Yahoo blocks default client user agents.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import feedparser

from stockpulse.errors import PermanentError
from stockpulse.providers.base import Fetcher, ProviderSpec, Query


class RssNewsFetcher(Fetcher):
    data_type = "news"

    def feeds(self) -> list[str]:
        feeds = self.settings.options.get("feeds") or []
        if not feeds:
            raise PermanentError("rss: providers.rss.options.feeds lists no feed", provider="rss")
        return [str(f) for f in feeds]

    def extract(self, query: Query) -> list[Any]:
        assert self.client is not None
        pages = []
        for feed in self.feeds():
            for symbol in (query.symbols if "{symbol}" in feed else (None,)):
                url = feed.replace("{symbol}", symbol) if symbol else feed
                pages.append({"feed": feed, "symbol": symbol, "text": self.client.get_text(url)})
        return pages

    def transform(self, pages: list[Any], query: Query) -> Iterator[dict[str, Any]]:
        earliest = datetime(query.start.year, query.start.month, query.start.day, tzinfo=UTC)
        latest = datetime(query.end.year, query.end.month, query.end.day, tzinfo=UTC) + timedelta(days=1)
        for page in pages:
            parsed = feedparser.parse(page["text"])
            if not parsed.get("version"):  # an HTML block page, an error text: no RSS or Atom at all
                raise PermanentError(f"rss: {page['feed']} did not answer with an RSS or Atom feed "
                                     f"({type(parsed.get('bozo_exception')).__name__})", provider="rss")
            feed_title = parsed.feed.get("title")
            language = parsed.feed.get("language")
            for entry in parsed.entries:
                published = _entry_time(entry)
                if isinstance(published, datetime) and not earliest <= published < latest:
                    continue
                link = entry.get("link") or None
                source = entry.get("source") or {}
                yield {
                    "provider": "rss",
                    "provider_id": entry.get("id") or None,
                    "url": link,
                    "title": entry.get("title") or None,
                    "summary": entry.get("summary") or None,
                    "publisher": source.get("title") or feed_title,
                    "author": entry.get("author") or None,
                    "published_at": published.isoformat() if isinstance(published, datetime) else published,
                    "language": language[:16] if isinstance(language, str) else None,
                    "symbols": [{"symbol": page["symbol"]}] if page["symbol"] else [],
                }


def _entry_time(entry: Any) -> datetime | str | None:
    """The item's time in UTC (feedparser normalises RFC 822 and ISO 8601 dates, zones included); the raw
    text when it could not, so validation quarantines the item naming the value; None when there is none."""
    # dict.get: FeedParserDict.get maps missing keys to others (with a deprecation warning).
    for key in ("published", "updated", "created"):
        parsed = dict.get(entry, f"{key}_parsed")
        if parsed:
            return datetime.fromtimestamp(calendar.timegm(parsed), UTC)
    for key in ("published", "updated", "created"):
        if dict.get(entry, key):
            return str(dict.get(entry, key))
    return None


PROVIDER = ProviderSpec(
    name="rss",
    default_base_url="https://feeds.finance.yahoo.com",
    fetchers={"news": RssNewsFetcher},
    default_rate_limit="60/minute",
    description="RSS 2.0 / Atom feeds listed in providers.rss.options.feeds",
)
