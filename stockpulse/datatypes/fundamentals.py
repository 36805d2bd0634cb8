"""Company fundamentals: profiles (one current row per symbol and source) and financial facts in long form.

A record is ``kind: profile`` or ``kind: fact``. Facts keep every filing: a restated value (same concept
and period, later filing) is a row of its own, and "latest as of a date" is :func:`facts_as_of` (or the
``financial_facts_latest`` view for today). Dates are ISO strings (``YYYY-MM-DD``); an instant fact (a
balance) has ``period_start == period_end``.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema
from sqlalchemy import Connection, func, select

from stockpulse.datatypes.bars import SYMBOL
from stockpulse.datatypes.base import DataType
from stockpulse.db.models import company_profiles, financial_facts
from stockpulse.pipeline.loader import upsert


class _CompanyRecord(Schema):
    class Meta:
        unknown = RAISE

    symbol = fields.String(required=True, validate=validate.Regexp(SYMBOL, error="invalid symbol"))
    source = fields.String(required=True)


class ProfileSchema(_CompanyRecord):
    kind = fields.Constant("profile")
    name = fields.String(required=True, validate=validate.Length(min=1, max=300), error_messages={
        "required": "the provider returned an empty profile (unknown symbol, or a fund it has no profile for)"})
    exchange = fields.String(allow_none=True, load_default=None)
    currency = fields.String(allow_none=True, load_default=None, validate=validate.Length(max=8))
    country = fields.String(allow_none=True, load_default=None)
    sector = fields.String(allow_none=True, load_default=None)
    industry = fields.String(allow_none=True, load_default=None)
    cik = fields.String(allow_none=True, load_default=None, validate=validate.Regexp(r"^\d{1,10}$"))
    market_cap = fields.Float(allow_none=True, load_default=None, allow_nan=False, validate=validate.Range(min=0))
    shares_outstanding = fields.Float(allow_none=True, load_default=None, allow_nan=False,
                                      validate=validate.Range(min=0))
    ipo_date = fields.Date(allow_none=True, load_default=None)
    website = fields.String(allow_none=True, load_default=None)
    description = fields.String(allow_none=True, load_default=None)
    fiscal_year_end = fields.String(allow_none=True, load_default=None, validate=validate.Length(max=16))
    as_of = fields.Date(allow_none=True, load_default=None)


class FactSchema(_CompanyRecord):
    kind = fields.Constant("fact")
    concept = fields.String(required=True, validate=validate.Length(min=1, max=200))
    unit = fields.String(load_default="", validate=validate.Length(max=32))
    period_start = fields.Date(allow_none=True, load_default=None)
    period_end = fields.Date(required=True)
    accession = fields.String(load_default="", validate=validate.Length(max=32))
    fiscal_year = fields.Integer(allow_none=True, load_default=None)
    fiscal_period = fields.String(allow_none=True, load_default=None, validate=validate.Length(max=8))
    form = fields.String(allow_none=True, load_default=None, validate=validate.Length(max=16))
    filed = fields.Date(required=True)
    value = fields.Float(required=True, allow_nan=False)
    frame = fields.String(allow_none=True, load_default=None, validate=validate.Length(max=16))

    @validates_schema
    def _period(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("period_start") and data["period_start"] > data["period_end"]:
            raise ValidationError(f"period_start {data['period_start']} is after period_end {data['period_end']}")


class FundamentalsSchema(Schema):
    """Dispatches on ``kind`` to the profile or the fact schema (their messages are the reasons)."""

    SCHEMAS = {"profile": ProfileSchema(), "fact": FactSchema()}

    def load(self, data: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind not in self.SCHEMAS:
            raise ValidationError({"kind": [f"must be one of: {', '.join(self.SCHEMAS)}"]})
        return self.SCHEMAS[kind].load(data, **kwargs)


PROFILE_COLUMNS = ("symbol", "source", "name", "exchange", "currency", "country", "sector", "industry", "cik",
                   "market_cap", "shares_outstanding", "ipo_date", "website", "description", "fiscal_year_end",
                   "as_of")
FACT_COLUMNS = ("symbol", "source", "concept", "unit", "period_start", "period_end", "accession", "fiscal_year",
                "fiscal_period", "form", "filed", "value", "frame")
FACT_KEY = ("symbol", "source", "concept", "unit", "period_start", "period_end", "accession")


def normalise(record: dict[str, Any]) -> dict[str, Any]:
    for name, value in list(record.items()):
        if isinstance(value, date):
            record[name] = value.isoformat()
    if record["kind"] == "fact" and record["period_start"] is None:
        record["period_start"] = record["period_end"]  # an instant
    return record


def key_of(record: dict[str, Any]) -> tuple[Any, ...]:
    if record["kind"] == "profile":
        return ("profile", record["symbol"], record["source"])
    return ("fact", *(record[c] for c in FACT_KEY))


def to_row(record: dict[str, Any]) -> list[Any]:
    columns = PROFILE_COLUMNS if record["kind"] == "profile" else FACT_COLUMNS
    return [record["kind"], *(record[c] for c in columns)]


def load(conn: Connection, rows: list[tuple[Any, ...]], *, pipeline: str) -> int:
    profiles = [tuple(r[1:]) for r in rows if r[0] == "profile"]
    facts = [tuple(r[1:]) for r in rows if r[0] == "fact"]
    changed = upsert(conn, company_profiles, PROFILE_COLUMNS, ("symbol", "source"), profiles,
                     stamp_column="updated_at")
    return changed + upsert(conn, financial_facts, FACT_COLUMNS, FACT_KEY, facts)


def watermark_points(rows: list[tuple[Any, ...]]) -> dict[str, datetime]:
    """Per symbol, the newest filing date among loaded facts (a profile counts as filed on its as-of date,
    else today)."""
    latest: dict[str, datetime] = {}
    today = datetime.now(UTC).date().isoformat()
    for row in rows:
        day = row[1 + FACT_COLUMNS.index("filed")] if row[0] == "fact" else (
            row[1 + PROFILE_COLUMNS.index("as_of")] or today)
        moment = datetime.fromisoformat(day).replace(tzinfo=UTC)
        symbol = row[1]
        if symbol not in latest or moment > latest[symbol]:
            latest[symbol] = moment
    return latest


def facts_as_of(conn: Connection, symbol: str, as_of: date, *, concept: str | None = None,
                source: str | None = None) -> list[Any]:
    """Each (source, concept, unit, period)'s value as known on ``as_of``: the newest filing filed by then."""
    f = financial_facts
    query = select(f).where(f.c.symbol == symbol, f.c.filed <= as_of.isoformat())
    if concept:
        query = query.where(f.c.concept == concept)
    if source:
        query = query.where(f.c.source == source)
    ranked = query.add_columns(func.row_number().over(
        partition_by=(f.c.source, f.c.concept, f.c.unit, f.c.period_start, f.c.period_end),
        order_by=(f.c.filed.desc(), f.c.accession.desc())).label("newest")).subquery()
    return conn.execute(select(*[ranked.c[c.name] for c in f.columns]).where(ranked.c.newest == 1)
                        .order_by(ranked.c.concept, ranked.c.period_end)).all()


# ---------------------------------------------------------------------------------- quality checks
# The schema knows a fact's shape, not what its concept means. These checks know a little: which concepts
# count shares, which are money or per-share amounts, which cannot be negative, and that a filing cannot
# report a period that has not ended (a fact "known" before its period ended would leak into as-of queries).

SHARE_COUNT = re.compile(r"(SharesOutstanding|SharesIssued|NumberOfShares\w*|WeightedAverageNumberOf\w*Shares\w*)$")
PER_SHARE = re.compile(r"(PerShare\w*|PerDilutedShare|PerBasicShare|^EPS|:eps)$", re.IGNORECASE)
MONEY = re.compile(r"^(us-gaap|ifrs-full):(Revenues?|RevenueFromContractWithCustomer\w*|Assets|AssetsCurrent|"
                   r"Liabilities\w*|NetIncomeLoss|GrossProfit|OperatingIncomeLoss|StockholdersEquity|"
                   r"CashAndCashEquivalentsAtCarryingValue)$")
NON_NEGATIVE = re.compile(r"(SharesOutstanding|SharesIssued|WeightedAverageNumberOf\w*Shares\w*|:Assets|"
                          r":AssetsCurrent|:Liabilities|:LiabilitiesCurrent|:Revenues?|"
                          r":RevenueFromContractWithCustomer\w*|CashAndCashEquivalentsAtCarryingValue)$")
CURRENCY = re.compile(r"^[A-Z]{3}$")
SCALES = (1_000.0, 1_000_000.0)  # thousands and millions: the usual mix-ups


def expected_unit(concept: str) -> tuple[str, re.Pattern[str]] | None:
    """(what the concept is, the pattern its unit must match) for the concepts whose unit is knowable."""
    if PER_SHARE.search(concept):
        return "a per-share amount", re.compile(r"^[A-Z]{3}/shares$")
    if SHARE_COUNT.search(concept):
        return "a share count", re.compile(r"^shares$")
    if MONEY.search(concept):
        return "an amount of money", CURRENCY
    return None


def _facts(records: list[dict[str, Any]]) -> list[int]:
    return [i for i, r in enumerate(records) if r.get("kind") == "fact"]


def check_unit_mismatch(records: list[dict[str, Any]], ctx: Any) -> list[tuple[int, dict[str, Any]]]:
    """A unit the concept cannot have (a share count in USD), or, for those concepts, a value
    ``1000x``/``1000000x`` (within ``scale_tolerance``) the previous period's value of the same concept and
    unit: a thousands or millions scale mixed up."""
    tolerance, minimum = float(ctx.params["scale_tolerance"]), float(ctx.params["min_abs"])
    found: list[tuple[int, dict[str, Any]]] = []
    series: dict[tuple[str, ...], list[tuple[str, float, int | None]]] = {}
    for i in _facts(records):
        r = records[i]
        expected = expected_unit(r["concept"])
        if expected and r["unit"] and not expected[1].match(r["unit"]):
            found.append((i, {"reason": f"{r['concept']} is {expected[0]} but its unit is {r['unit']!r}",
                              "unit": r["unit"]}))
            continue
        if expected:  # magnitudes of balances, revenue, share counts and EPS move slowly; other concepts swing
            series.setdefault((r["symbol"], r["source"], r["concept"], r["unit"]), []).append((r["period_end"], r["value"], i))
    if not series:
        return found
    _stored_neighbours(series, ctx)
    for (_symbol, _source, concept, unit), points in series.items():
        points.sort(key=lambda p: (p[0], p[2] is not None))
        for (prev_end, prev, _), (end, value, index) in zip(points, points[1:], strict=False):
            if index is None or abs(prev) < minimum or abs(value) < minimum or end == prev_end:
                continue
            ratio = abs(value / prev)
            for scale in SCALES:
                for factor, word in ((scale, "above"), (1 / scale, "below")):
                    if abs(ratio / factor - 1) <= tolerance:
                        found.append((index, {
                            "reason": f"{concept} {value:g} {unit} is about {scale:,.0f}x {word} the value {prev:g} "
                                      f"for {prev_end}: a scale (thousands/millions) mix-up?",
                            "previous": prev, "previous_period_end": prev_end}))
    return found


def _stored_neighbours(series: dict[tuple[str, ...], list[tuple[str, float, int | None]]], ctx: Any) -> None:
    """Adds to each series the stored value of the latest period before the batch's first (any filing)."""
    if ctx.conn is None:
        return
    f = financial_facts
    symbols = sorted({key[0] for key in series})
    first = min(p[0] for points in series.values() for p in points)
    newest = (select(f.c.symbol, f.c.source, f.c.concept, f.c.unit, func.max(f.c.period_end).label("period_end"))
              .where(f.c.symbol.in_(symbols), f.c.period_end < first)
              .group_by(f.c.symbol, f.c.source, f.c.concept, f.c.unit).subquery())
    rows = ctx.conn.execute(select(f.c.symbol, f.c.source, f.c.concept, f.c.unit, f.c.period_end, f.c.value).join(
        newest, (f.c.symbol == newest.c.symbol) & (f.c.source == newest.c.source) & (f.c.concept == newest.c.concept)
        & (f.c.unit == newest.c.unit) & (f.c.period_end == newest.c.period_end)))
    for symbol, source, concept, unit, period_end, value in rows:
        points = series.get((symbol, source, concept, unit))
        if points is not None and period_end < min(p[0] for p in points):
            points.append((period_end, value, None))


def check_impossible_sign(records: list[dict[str, Any]], ctx: Any) -> list[tuple[int, dict[str, Any]]]:
    """A negative value of a concept that cannot be negative (shares outstanding, assets, revenue)."""
    return [(i, {"reason": f"{records[i]['concept']} cannot be negative ({records[i]['value']:g})"})
            for i in _facts(records) if records[i]["value"] < 0 and NON_NEGATIVE.search(records[i]["concept"])]


def check_period_after_filed(records: list[dict[str, Any]], ctx: Any) -> list[tuple[int, dict[str, Any]]]:
    """A period ending after the filing that reports it: impossible for a reported value, and it would make
    the value visible in ``facts_as_of`` before its period ended."""
    return [(i, {"reason": f"period_end {records[i]['period_end']} is after filed {records[i]['filed']}"})
            for i in _facts(records) if records[i]["period_end"] > records[i]["filed"]]


def _quality_checks() -> tuple[Any, ...]:
    from stockpulse.quality import Check

    return (
        Check("unit_mismatch", check_unit_mismatch, "warn", {"scale_tolerance": 0.2, "min_abs": 1.0},
              "a unit the concept cannot have, or a value 1000x/1000000x its previous period's"),
        Check("impossible_sign", check_impossible_sign, "error", {},
              "a negative value of a concept that cannot be negative (shares outstanding, assets, revenue)"),
        Check("period_after_filed", check_period_after_filed, "error", {},
              "a fact whose period ends after its filing date"),
    )


FUNDAMENTALS = DataType(
    name="fundamentals",
    schema=FundamentalsSchema(),
    table=financial_facts,
    key=FACT_KEY,
    columns=("kind", *FACT_COLUMNS),
    normalise=normalise,
    to_row=to_row,
    from_row=tuple,
    key_of=key_of,
    load=load,
    watermark_points=watermark_points,
    # An incremental run finds no new filing for most companies most days.
    every_symbol_has_data=False,
    quality_checks=_quality_checks(),
)
