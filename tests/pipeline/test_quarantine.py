"""Reprocessing quarantined records: schemas and the pipeline's error-severity quality checks both apply, and
every data type loads through its own loader."""

from __future__ import annotations

from typing import Any

import pytest

from stockpulse.datatypes.base import Rejected
from tests.conftest import table_rows


def quarantine(records: list[tuple[str, str, dict[str, Any], str]]) -> None:
    from stockpulse.db.engine import get_engine
    from stockpulse.pipeline.quarantine import quarantine_records

    with get_engine().begin() as conn:
        for no, (pipeline, data_type, record, reason) in enumerate(records):
            quarantine_records(conn, [Rejected(no, record, reason)], pipeline=pipeline, run_id="r1", batch_no=0,
                               data_type=data_type, provider="x")


def test_reprocess_keeps_what_a_check_still_refuses_and_loads_news_through_its_loader(
        database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from stockpulse.config import reset_settings
    from stockpulse.pipeline.quarantine import reprocess

    negative = {"kind": "fact", "symbol": "AAPL", "source": "sec", "concept": "dei:EntityCommonStockSharesOutstanding",
                "unit": "shares", "period_end": "2024-03-31", "accession": "a1", "filed": "2024-05-03",
                "value": -15e9}
    article = {"provider": "finnhub", "provider_id": "7", "url": "https://news.example.com/a/7", "title": "T",
               "published_at": "2024-01-02T18:00:00+00:00", "symbols": [{"symbol": "AAPL"}]}
    quarantine([("sec_facts", "fundamentals", negative, "quality check impossible_sign: ..."),
                ("finnhub_news", "news", article, "published_at: article has no timestamp")])
    assert reprocess() == {"checked": 2, "loaded": 1, "still_invalid": 1}
    [held] = table_rows("quarantine")
    assert held.reason == ("quality check impossible_sign: dei:EntityCommonStockSharesOutstanding cannot be "
                           "negative (-1.5e+10)")
    assert [a.url for a in table_rows("news_articles")] == ["https://news.example.com/a/7"]
    assert [(s.article_id, s.symbol) for s in table_rows("news_symbols")] == [(table_rows("news_articles")[0].id,
                                                                               "AAPL")]
    # The operator decides the check is wrong for this source: downgraded to warn, the record loads.
    monkeypatch.setenv("STOCKPULSE_PIPELINES__SEC_FACTS__OPTIONS__QUALITY", "{impossible_sign: {severity: warn}}")
    reset_settings()
    try:
        assert reprocess(pipeline="sec_facts") == {"checked": 1, "loaded": 1, "still_invalid": 0}
    finally:
        monkeypatch.undo()
        reset_settings()
    assert [f.value for f in table_rows("financial_facts")] == [-15e9] and table_rows("quarantine") == []
