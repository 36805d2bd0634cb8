"""SEC EDGAR XBRL company facts (https://www.sec.gov/search-filings/edgar-application-programming-interfaces).

``GET https://data.sec.gov/api/xbrl/companyfacts/CIK##########.json`` (CIK zero-padded to 10 digits):
``facts`` -> taxonomy -> concept -> ``units`` -> unit -> facts with ``start`` (durations only), ``end``,
``val``, ``accn``, ``fy``, ``fp``, ``form``, ``filed`` and sometimes ``frame``. The same period repeats in
later filings (comparatives, restatements): every filing is kept. Tickers map to CIKs through
``https://www.sec.gov/files/company_tickers.json`` (an object keyed by rank, ``cik_str`` a number), cached
in ``sec_tickers`` and refreshed daily. SEC requires a descriptive ``User-Agent`` with contact details and
allows 10 requests per second; an undeclared tool gets a 403 HTML page, a client over the limit a 403
"Request Rate Threshold Exceeded" page for about ten minutes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import requests

from stockpulse.errors import PermanentError, TransientError
from stockpulse.providers.base import Fetcher, ProviderSpec, Query

DEFAULT_BASE_URL = "https://data.sec.gov"
TICKERS_REFRESH = timedelta(days=1)
USER_AGENT = re.compile(r"\S+@\S+\.\S+")


def tickers_url(base_url: str) -> str:
    """company_tickers.json lives on www.sec.gov, not data.sec.gov; anywhere else (the simulator, a
    mirror) serves it beside the facts."""
    if urlsplit(base_url).hostname == urlsplit(DEFAULT_BASE_URL).hostname:
        return "https://www.sec.gov/files/company_tickers.json"
    return f"{base_url.rstrip('/')}/files/company_tickers.json"


def check_response(response: requests.Response, body: Any) -> None:
    if response.status_code not in (403, 429) and not (response.status_code == 200 and body is None):
        return
    text = response.content[:4000].decode("utf-8", "replace")
    title = re.search(r"<title>(.*?)</title>", text, re.I | re.S)
    what = " ".join(title.group(1).split()) if title else f"HTTP {response.status_code}"
    if response.status_code == 429 or "threshold" in text.lower():
        # The block lifts after about ten minutes below 10 requests/second.
        raise TransientError(f"sec: {what} (over 10 requests/second; blocked for ~10 minutes)",
                             retry_after=600.0, provider="sec")
    if "undeclared automated tool" in text.lower() or response.status_code == 403:
        raise PermanentError(f"sec: {what}: set providers.sec.user_agent to your company and a contact "
                             "e-mail, as SEC requires", provider="sec")


def validate_settings(settings: Any) -> list[str]:
    if not settings.user_agent or not USER_AGENT.search(settings.user_agent):
        return ["providers.sec.user_agent: SEC requires a User-Agent naming your company and a contact e-mail "
                "(e.g. 'Example Corp data@example.com'); set it or STOCKPULSE_PROVIDERS__SEC__USER_AGENT"]
    return []


class SecCompanyFactsFetcher(Fetcher):
    data_type = "fundamentals"

    def extract(self, query: Query) -> list[Any]:
        assert self.client is not None
        ciks = self.ciks(query.symbols)
        pages = []
        for symbol in query.symbols:
            cik = ciks[symbol]
            body = self.client.get_json(f"/api/xbrl/companyfacts/CIK{cik:010d}.json")
            if not isinstance(body, dict) or not isinstance(body.get("facts"), dict):
                raise PermanentError(f"sec: companyfacts for {symbol} (CIK {cik}) has no 'facts' object",
                                     provider="sec")
            pages.append({"symbol": symbol, "cik": cik, "body": body})
        return pages

    def ciks(self, symbols: tuple[str, ...]) -> dict[str, int]:
        """Ticker -> CIK from the cached map, refreshed when older than a day."""
        from stockpulse.db.engine import get_engine
        from stockpulse.db.models import sec_tickers

        with get_engine().connect() as conn:
            refreshed = conn.execute(select_max_refreshed(sec_tickers)).scalar()
        if refreshed is None or datetime.now(UTC) - refreshed > TICKERS_REFRESH:
            self.refresh_tickers()
            refreshed = datetime.now(UTC)
        wanted = {s: s.replace(".", "-") for s in symbols}  # SEC writes share classes with '-' (BRK-B)
        with get_engine().connect() as conn:
            rows = dict(conn.execute(sec_tickers.select().with_only_columns(sec_tickers.c.ticker, sec_tickers.c.cik)
                                     .where(sec_tickers.c.ticker.in_(list(wanted.values())))).all())
        missing = [s for s, t in wanted.items() if t not in rows]
        if missing:
            raise PermanentError(f"sec: no CIK for {', '.join(missing)} in SEC's company_tickers.json (refreshed "
                                 f"{refreshed:%Y-%m-%d %H:%M} UTC): not an SEC registrant, or a wrong ticker",
                                 provider="sec")
        return {s: int(rows[t]) for s, t in wanted.items()}

    def refresh_tickers(self) -> int:
        assert self.client is not None
        from stockpulse.db.engine import get_engine
        from stockpulse.db.models import sec_tickers

        body = self.client.get_json(tickers_url(self.client.base_url))
        if not isinstance(body, dict):
            raise PermanentError("sec: company_tickers.json is not an object keyed by rank", provider="sec")
        now = datetime.now(UTC)
        rows: dict[str, dict[str, Any]] = {}
        for entry in body.values():
            if isinstance(entry, dict) and isinstance(entry.get("ticker"), str) and str(entry.get("cik_str", "")).isdigit():
                ticker = entry["ticker"].upper()
                rows.setdefault(ticker, {"ticker": ticker, "cik": int(entry["cik_str"]),
                                         "title": str(entry.get("title") or "")[:300], "refreshed_at": now})
        if not rows:
            raise PermanentError("sec: company_tickers.json lists no ticker", provider="sec")
        with get_engine().begin() as conn:
            conn.execute(sec_tickers.delete())
            conn.execute(sec_tickers.insert(), list(rows.values()))
        return len(rows)

    def transform(self, pages: list[Any], query: Query) -> Iterator[dict[str, Any]]:
        earliest = query.start.isoformat()  # incremental: facts filed since the watermark (minus overlap)
        for page in pages:
            for taxonomy, concepts in page["body"]["facts"].items():
                for concept, described in (concepts or {}).items():
                    for unit, facts in ((described or {}).get("units") or {}).items():
                        for fact in facts or ():
                            if not isinstance(fact, dict):
                                yield {"kind": "fact", "symbol": page["symbol"], "source": "sec", "_raw": fact}
                                continue
                            filed = fact.get("filed")
                            if isinstance(filed, str) and filed < earliest:
                                continue
                            yield {
                                "kind": "fact", "symbol": page["symbol"], "source": "sec",
                                "concept": f"{taxonomy}:{concept}", "unit": unit,
                                "period_start": fact.get("start"), "period_end": fact.get("end"),
                                "accession": fact.get("accn") or "", "fiscal_year": fact.get("fy"),
                                "fiscal_period": fact.get("fp"), "form": fact.get("form"), "filed": filed,
                                "value": fact.get("val"), "frame": fact.get("frame"),
                            }


def select_max_refreshed(table: Any) -> Any:
    from sqlalchemy import func, select

    return select(func.max(table.c.refreshed_at))


PROVIDER = ProviderSpec(
    name="sec",
    default_base_url=DEFAULT_BASE_URL,
    fetchers={"fundamentals": SecCompanyFactsFetcher},
    default_rate_limit="10/second",  # SEC's fair-access limit, across all our workers
    check_response=check_response,
    validate_settings=validate_settings,
    description="SEC EDGAR XBRL company facts (keyless; a descriptive User-Agent is required)",
)

