from __future__ import annotations

from stockpulse.datatypes.fundamentals import FUNDAMENTALS


def fact(**overrides: object) -> dict:
    base = {"kind": "fact", "symbol": "AAPL", "source": "sec", "concept": "us-gaap:Assets", "unit": "USD",
            "period_start": None, "period_end": "2024-03-31", "accession": "0000320193-24-000001",
            "fiscal_year": 2024, "fiscal_period": "Q2", "form": "10-Q", "filed": "2024-05-03", "value": 1.5e11,
            "frame": "CY2024Q1I"}
    base.update(overrides)
    return base


def test_profiles_and_facts_validate_with_their_own_schema_and_reasons() -> None:
    result = FUNDAMENTALS.validate([
        fact(),
        fact(accession="0000320193-24-000002", filed="2024-08-01"),  # the same period in a later filing: kept
        {"kind": "profile", "symbol": "AAPL", "source": "finnhub", "name": "Apple Inc", "market_cap": 3.1e12},
        {"kind": "profile", "symbol": "ZZZZ", "source": "finnhub"},
        fact(period_start="2024-06-01"),
        fact(value=float("nan"), accession="x"),
        {"kind": "quote"},
        fact(accession="0000320193-24-000001"),  # an exact repeat of the first
    ])
    assert len(result.valid) == 3
    assert result.valid[0]["period_start"] == result.valid[0]["period_end"] == "2024-03-31"  # an instant
    reasons = [r.reason for r in result.rejected]
    assert reasons[0] == ("name: the provider returned an empty profile (unknown symbol, or a fund it has no "
                          "profile for)")
    assert reasons[1] == "period_start 2024-06-01 is after period_end 2024-03-31"
    assert reasons[2].startswith("value:")
    assert reasons[3] == "kind: must be one of: profile, fact"
    assert reasons[4].startswith("duplicate of an earlier record")


# ------------------------------------------------------------------------------------------ quality checks


def quality(records: list[dict], conn: object = None) -> dict[str, list[tuple[int, str]]]:
    from stockpulse.config import PipelineSettings
    from stockpulse.quality import run_checks
    from stockpulse.universes import Universe

    valid = FUNDAMENTALS.validate(records).valid
    assert len(valid) == len(records)
    pipe = PipelineSettings("f", "fundamentals", "sec", Universe("u", tickers=("AAPL",)))
    result = run_checks(FUNDAMENTALS.quality_checks, valid, pipe, conn, FUNDAMENTALS.key_of, first_record_no=0)
    out: dict[str, list[tuple[int, str]]] = {}
    for f in result.findings:
        out.setdefault(f.check, []).append((f.index, f.details["reason"]))
    return out


def test_units_a_concept_cannot_have_and_scale_mix_ups() -> None:
    found = quality([
        fact(concept="dei:EntityCommonStockSharesOutstanding", unit="USD", value=1.5e10),
        fact(concept="us-gaap:EarningsPerShareBasic", unit="USD/shares", value=1.53, accession="a"),
        fact(concept="us-gaap:Revenues", unit="shares", value=9e10, accession="b"),
        fact(period_end="2023-12-31", value=1.5e11, accession="c", filed="2024-02-02"),
        fact(period_end="2024-06-30", value=1.52e8, accession="d", filed="2024-08-02"),  # reported in thousands
        fact(period_end="2024-09-30", value=1.55e11, accession="e", filed="2024-11-01"),  # back to units
        fact(concept="us-gaap:IncomeTaxExpenseBenefit", period_end="2024-06-30", value=3e9, accession="f",
             filed="2024-08-02"),
    ])
    assert found == {"unit_mismatch": [
        (0, "dei:EntityCommonStockSharesOutstanding is a share count but its unit is 'USD'"),
        (2, "us-gaap:Revenues is an amount of money but its unit is 'shares'"),
        (4, "us-gaap:Assets 1.52e+08 USD is about 1,000x below the value 1.5e+11 for 2023-12-31: a scale "
            "(thousands/millions) mix-up?"),
        (5, "us-gaap:Assets 1.55e+11 USD is about 1,000x above the value 1.52e+08 for 2024-06-30: a scale "
            "(thousands/millions) mix-up?"),
    ]}


def test_impossible_signs_and_periods_after_their_filing_quarantine() -> None:
    from stockpulse.config import PipelineSettings
    from stockpulse.quality import run_checks
    from stockpulse.universes import Universe

    records = FUNDAMENTALS.validate([
        fact(concept="dei:EntityCommonStockSharesOutstanding", unit="shares", value=-1.5e10),
        fact(concept="us-gaap:NetIncomeLoss", value=-2e9, accession="a"),  # a loss: fine
        fact(period_end="2024-06-30", filed="2024-05-03", accession="b"),
    ]).valid
    pipe = PipelineSettings("f", "fundamentals", "sec", Universe("u", tickers=("AAPL",)))
    result = run_checks(FUNDAMENTALS.quality_checks, records, pipe, None, FUNDAMENTALS.key_of, first_record_no=10)
    assert [(r.record_no, r.reason) for r in result.rejected] == [
        (10, "quality check impossible_sign: dei:EntityCommonStockSharesOutstanding cannot be negative (-1.5e+10)"),
        (12, "quality check period_after_filed: period_end 2024-06-30 is after filed 2024-05-03")]
    assert [r["concept"] for r in result.valid] == ["us-gaap:NetIncomeLoss"]


def test_the_stored_previous_period_is_the_scale_reference(database: str) -> None:
    from stockpulse.datatypes.fundamentals import load
    from stockpulse.db.engine import get_engine

    stored = FUNDAMENTALS.validate([fact(period_end="2023-12-31", value=1.5e11, filed="2024-02-02"),
                                    fact(period_end="2022-12-31", value=1.0, filed="2023-02-02", accession="z")]).valid
    with get_engine().begin() as conn:
        load(conn, [tuple(r) for r in FUNDAMENTALS.rows(stored)], pipeline="f")
    with get_engine().connect() as conn:
        found = quality([fact(value=1.49e5, accession="n")], conn)
    assert [i for i, _ in found["unit_mismatch"]] == [0]
    assert "about 1,000,000x below the value 1.5e+11 for 2023-12-31" in found["unit_mismatch"][0][1]
