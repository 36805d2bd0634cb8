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
