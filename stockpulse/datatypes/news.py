"""News articles: schema, canonical URL and article id, HTML reduced to text, and the three-table load.

One article per canonical URL, whichever providers reported it: the id is derived from the URL with its
scheme and host lower-cased, the fragment and tracking parameters (``utm_*``, ``fbclid``, ...) removed and
the remaining query sorted. Each provider's sighting is kept in ``news_article_sources``; the symbols an
article concerns, with provider sentiment where given, in ``news_symbols``.
"""

from __future__ import annotations

import hashlib
import html
import re
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema
from sqlalchemy import Connection, case, func, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from w3lib.url import canonicalize_url

from stockpulse.datatypes.bars import SYMBOL
from stockpulse.datatypes.base import DataType
from stockpulse.db.models import news_article_sources, news_articles, news_symbols
from stockpulse.errors import utcnow

# Query parameters that identify a campaign or a click, not the article.
TRACKING_PARAMS = re.compile(r"^(utm_\w*|fbclid|gclid|dclid|msclkid|mc_cid|mc_eid|\.?tsrc|cmpid|ncid|soc_src|"
                             r"soc_trk|ref|referrer|src|yptr|guccounter|guce_referrer\w*)$", re.IGNORECASE)


def canonical_url(url: str) -> str:
    """The URL that identifies an article across providers."""
    parts = urlsplit(url.strip())
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not TRACKING_PARAMS.match(k)]
    netloc = parts.netloc.lower()
    if parts.scheme.lower() == "https" and netloc.endswith(":443") or parts.scheme.lower() == "http" \
            and netloc.endswith(":80"):
        netloc = netloc.rsplit(":", 1)[0]
    path = parts.path or "/"
    return canonicalize_url(urlunsplit((parts.scheme.lower(), netloc, path, urlencode(query), "")))


def article_id(url: str) -> str:
    return hashlib.sha256(canonical_url(url).encode()).hexdigest()[:32]


class _TextOnly(HTMLParser):
    BLOCK = {"p", "br", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("script", "style"):
            self.skip += 1
        elif tag in self.BLOCK:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self.skip:
            self.skip -= 1

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(data)


def html_to_text(value: str | None) -> str | None:
    """Markup and entities (``&amp;``, ``&#8217;``, doubly escaped ``&amp;lt;b&amp;gt;``) reduced to plain
    text with single spaces; None stays None."""
    if value is None:
        return None
    text = value
    for _ in range(2):  # feeds sometimes escape their HTML twice
        if "<" not in text and "&" not in text:
            break
        parser = _TextOnly()
        parser.feed(html.unescape(text) if "&lt;" in text else text)
        parser.close()
        text = "".join(parser.parts)
    return " ".join(text.split()) or None


class NewsSymbolSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    symbol = fields.String(required=True, validate=validate.Regexp(SYMBOL, error="invalid symbol"))
    sentiment_score = fields.Float(allow_none=True, allow_nan=False, load_default=None)
    sentiment_label = fields.String(allow_none=True, load_default=None, validate=validate.Length(max=32))
    relevance_score = fields.Float(allow_none=True, allow_nan=False, load_default=None)


class NewsSchema(Schema):
    """One article as one provider reported it, in canonical field names."""

    class Meta:
        unknown = EXCLUDE

    provider = fields.String(required=True)
    provider_id = fields.String(allow_none=True, load_default=None, validate=validate.Length(max=200))
    url = fields.Url(required=True, schemes={"http", "https"}, require_tld=False,
                     error_messages={"required": "article has no URL", "null": "article has no URL"})
    title = fields.String(required=True, validate=validate.Length(min=1),
                          error_messages={"required": "article has no title", "null": "article has no title"})
    summary = fields.String(allow_none=True, load_default=None)
    publisher = fields.String(allow_none=True, load_default=None)
    author = fields.String(allow_none=True, load_default=None)
    published_at = fields.AwareDateTime(required=True, error_messages={
        "required": "article has no timestamp", "null": "article has no timestamp"})
    language = fields.String(allow_none=True, load_default=None, validate=validate.Length(max=16))
    symbols = fields.List(fields.Nested(NewsSymbolSchema), load_default=list)

    @validates_schema
    def _title_has_text(self, data: dict[str, Any], **_: Any) -> None:
        if not html_to_text(data["title"]):
            raise ValidationError("title is empty once its HTML is removed", "title")


def normalise(record: dict[str, Any]) -> dict[str, Any]:
    record["published_at"] = record["published_at"].astimezone(UTC)
    record["title"] = html_to_text(record["title"])
    record["summary"] = html_to_text(record["summary"])
    for name in ("publisher", "author"):
        if record[name] is not None:
            record[name] = (html_to_text(record[name]) or "")[:200] or None
    record["canonical_url"] = canonical_url(record["url"])
    record["id"] = hashlib.sha256(record["canonical_url"].encode()).hexdigest()[:32]
    seen: dict[str, dict[str, Any]] = {}
    for link in record["symbols"]:
        merge_symbol(seen, link)
    record["symbols"] = list(seen.values())
    return record


def merge_symbol(seen: dict[str, dict[str, Any]], link: dict[str, Any]) -> None:
    """One link per symbol; sentiment the first provider gave wins, missing values are filled in."""
    existing = seen.setdefault(link["symbol"], dict(link))
    for key in ("sentiment_score", "sentiment_label", "relevance_score"):
        if existing.get(key) is None and link.get(key) is not None:
            existing[key] = link[key]


def merge(earlier: dict[str, Any], later: dict[str, Any]) -> dict[str, Any]:
    """The same article twice from one provider in one payload (e.g. found under two symbols): one record
    with the symbols of both."""
    seen = {link["symbol"]: link for link in earlier["symbols"]}
    for link in later["symbols"]:
        merge_symbol(seen, link)
    earlier["symbols"] = list(seen.values())
    ids = (earlier.get("provider_id"), later.get("provider_id"))
    if ids[0] != ids[1] if None not in ids else earlier["url"] != later["url"]:
        # Not the same item listed under two symbols: another item of the provider's that is the same article.
        earlier.setdefault("duplicates", []).append({"provider_id": later.get("provider_id"), "url": later["url"]})
    for key in ("summary", "author", "publisher", "language", "provider_id"):
        if earlier.get(key) is None:
            earlier[key] = later.get(key)
    return earlier


COLUMNS = ("id", "provider", "canonical_url", "url", "title", "summary", "publisher", "author", "published_at",
           "language", "provider_id", "symbols")


def to_row(r: dict[str, Any]) -> list[Any]:
    return [r["id"], r["provider"], r["canonical_url"], r["url"], r["title"], r["summary"], r["publisher"],
            r["author"], r["published_at"].isoformat(), r["language"], r["provider_id"],
            [[s["symbol"], s["sentiment_score"], s["sentiment_label"], s["relevance_score"]] for s in r["symbols"]]]


def from_row(row: list[Any]) -> tuple[Any, ...]:
    return (*row[:8], datetime.fromisoformat(row[8]), *row[9:])


def _insert(conn: Connection, table: Any) -> Any:
    return pg_insert(table) if conn.dialect.name == "postgresql" else sqlite_insert(table)


def load(conn: Connection, rows: list[tuple[Any, ...]], *, pipeline: str) -> int:
    """Upsert articles, their provider sightings and symbol links; returns articles new to the table.

    An article already stored keeps its content (the first provider's); only missing fields are filled.
    Running the same load twice leaves the same rows.
    """
    if not rows:
        return 0
    now = utcnow()
    c = {name: i for i, name in enumerate(COLUMNS)}
    articles: dict[str, dict[str, Any]] = {}
    sources: dict[tuple[str, str], dict[str, Any]] = {}
    links: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        aid = row[c["id"]]
        articles.setdefault(aid, {
            "id": aid, "canonical_url": row[c["canonical_url"]], "url": row[c["url"]], "title": row[c["title"]],
            "summary": row[c["summary"]], "publisher": row[c["publisher"]], "author": row[c["author"]],
            "published_at": row[c["published_at"]], "language": row[c["language"]],
            "first_provider": row[c["provider"]], "ingested_at": now})
        sources.setdefault((aid, row[c["provider"]]), {
            "article_id": aid, "provider": row[c["provider"]], "provider_id": row[c["provider_id"]],
            "url": row[c["url"]], "pipeline": pipeline, "first_seen_at": now})
        for symbol, score, label, relevance in row[c["symbols"]]:
            link = links.setdefault((aid, symbol), {
                "article_id": aid, "symbol": symbol, "sentiment_score": None, "sentiment_label": None,
                "relevance_score": None, "sentiment_provider": None})
            if link["sentiment_score"] is None and link["sentiment_label"] is None and (score, label) != (None, None):
                link.update(sentiment_score=score, sentiment_label=label, sentiment_provider=row[c["provider"]])
            if link["relevance_score"] is None:
                link["relevance_score"] = relevance
    known = set(conn.execute(select(news_articles.c.id).where(news_articles.c.id.in_(list(articles)))).scalars())
    stmt = _insert(conn, news_articles)
    fill = ("summary", "publisher", "author", "language")
    conn.execute(stmt.on_conflict_do_update(
        index_elements=["id"], set_={n: func.coalesce(news_articles.c[n], stmt.excluded[n]) for n in fill},
        where=or_(*[news_articles.c[n].is_(None) & stmt.excluded[n].isnot(None) for n in fill])),
        list(articles.values()))
    conn.execute(_insert(conn, news_article_sources).on_conflict_do_nothing(
        index_elements=["article_id", "provider"]), list(sources.values()))
    stmt = _insert(conn, news_symbols)
    s, x = news_symbols.c, stmt.excluded
    # The first provider's sentiment stays (score, label and provider together); a missing relevance is
    # filled in from whichever provider has one.
    no_sentiment = s.sentiment_score.is_(None) & s.sentiment_label.is_(None)
    gains_sentiment = no_sentiment & (x.sentiment_score.isnot(None) | x.sentiment_label.isnot(None))
    gains_relevance = s.relevance_score.is_(None) & x.relevance_score.isnot(None)
    conn.execute(stmt.on_conflict_do_update(index_elements=["article_id", "symbol"], set_={
        **{name: case((no_sentiment, x[name]), else_=s[name])
           for name in ("sentiment_score", "sentiment_label", "sentiment_provider")},
        "relevance_score": func.coalesce(s.relevance_score, x.relevance_score)},
        where=gains_sentiment | gains_relevance), list(links.values()))
    return len(set(articles) - known)


def watermark_points(rows: list[tuple[Any, ...]]) -> dict[str, datetime]:
    """The newest published_at per symbol among the loaded articles."""
    latest: dict[str, datetime] = {}
    for row in rows:
        published = row[8]
        for link in row[11]:
            symbol = link[0]
            if symbol not in latest or published > latest[symbol]:
                latest[symbol] = published
    return latest


# ---------------------------------------------------------------------------------- quality checks
# The schema refuses an article without a URL, title or timestamp ("article has no URL"); these checks catch
# the placeholders that pass it and the duplicates that the canonical URL folds together.

def check_missing_url_time(records: list[dict[str, Any]], ctx: Any) -> list[tuple[int, dict[str, Any]]]:
    """A placeholder for the URL (a site's home page, which would fold every article of that site into one)
    or for the time (the epoch, or before ``earliest``)."""
    earliest = datetime.fromisoformat(str(ctx.params["earliest"])).replace(tzinfo=UTC)
    found = []
    for i, r in enumerate(records):
        if urlsplit(r["canonical_url"]).path in ("", "/"):
            found.append((i, {"reason": f"url {r['url']} is a home page, not an article"}))
        elif r["published_at"] < earliest:
            found.append((i, {"reason": f"published_at {r['published_at'].isoformat()} is a placeholder (before "
                                        f"{earliest.date()})"}))
    return found


def check_published_in_future(records: list[dict[str, Any]], ctx: Any) -> list[tuple[int, dict[str, Any]]]:
    """Published more than ``future_s`` after now: usually local time stamped as UTC."""
    limit = ctx.now.timestamp() + float(ctx.params["future_s"])
    return [(i, {"reason": f"published_at {r['published_at'].isoformat()} is "
                           f"{(r['published_at'] - ctx.now).total_seconds() / 60:.0f} minutes in the future"})
            for i, r in enumerate(records) if r["published_at"].timestamp() > limit]


def check_duplicate_url(records: list[dict[str, Any]], ctx: Any) -> list[tuple[int, dict[str, Any]]]:
    """One provider giving the same article (the same canonical URL) as several items: within the payload
    (merged into one record), or under a different id than it gave before (stored in
    ``news_article_sources``). The article is stored once either way; the finding says the provider repeats
    itself."""
    found = []
    stored: dict[tuple[str, str], str | None] = {}
    if ctx.conn is not None and records:
        s = news_article_sources.c
        rows = ctx.conn.execute(select(s.article_id, s.provider, s.provider_id).where(
            s.article_id.in_(sorted({r["id"] for r in records})), s.provider.in_(sorted({r["provider"] for r in records}))))
        stored = {(aid, provider): pid for aid, provider, pid in rows}
    for i, r in enumerate(records):
        others = [d["provider_id"] or d["url"] for d in r.get("duplicates", ())]
        before = stored.get((r["id"], r["provider"]), r.get("provider_id"))
        if before is not None and r.get("provider_id") is not None and before != r["provider_id"]:
            others.append(f"{before} (stored)")
        if others:
            found.append((i, {"reason": f"{r['provider']} item {r.get('provider_id') or r['url']} is the same "
                                        f"article as {', '.join(map(str, others))}", "duplicates": others,
                              "canonical_url": r["canonical_url"]}))
    return found


def _quality_checks() -> tuple[Any, ...]:
    from stockpulse.quality import Check

    return (
        Check("missing_url_time", check_missing_url_time, "error", {"earliest": "1995-01-01"},
              "a home page for the URL or a placeholder time (absent ones the schema refuses)"),
        Check("published_in_future", check_published_in_future, "warn", {"future_s": 300.0},
              "published more than future_s after now"),
        Check("duplicate_url", check_duplicate_url, "warn", {},
              "one provider giving the same article (canonical URL) as several items"),
    )


NEWS = DataType(
    name="news",
    schema=NewsSchema(),
    table=news_articles,
    key=("id", "provider"),
    columns=COLUMNS,
    normalise=normalise,
    to_row=to_row,
    from_row=from_row,
    merge=merge,
    load=load,
    watermark_points=watermark_points,
    # A symbol with no news in the window is normal, not a sign of an unknown ticker.
    every_symbol_has_data=False,
    quality_checks=_quality_checks(),
)
