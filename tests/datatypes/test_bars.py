from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stockpulse.datatypes.bars import BARS, fast_validate, normalise

GOOD = {"symbol": "AAPL", "interval": "1d", "ts": "2024-01-02T00:00:00+00:00", "open": 10.0, "high": 12.0,
        "low": 9.5, "close": 11.0, "volume": 1000.0, "source": "alpaca"}


def with_(**changes: object) -> dict:
    record = dict(GOOD)
    for key, value in changes.items():
        if value is ...:
            record.pop(key)
        else:
            record[key] = value
    return record


def test_valid_record_is_canonical_and_utc() -> None:
    record, reason = BARS.validate_one(with_(ts="2024-01-02T00:00:00-05:00"))
    assert reason is None
    assert record["ts"] == datetime(2024, 1, 2, 5, tzinfo=UTC)


@pytest.mark.parametrize(("record", "reason"), [
    (with_(volume=-5.0), "volume: Must be greater than or equal to 0."),
    (with_(high=9.0), "high 9.0 is below max(open, close, low) = 11.0"),
    (with_(low=10.5), "low 10.5 is above min(open, close) = 10.0"),
    (with_(close=math.nan), "close: Special numeric values (nan or infinity) are not permitted."),
    (with_(close="NaN"), "close: Special numeric values (nan or infinity) are not permitted."),
    (with_(volume=...), "volume: Missing data for required field."),
    (with_(ts="2024-01-02T00:00:00"), "ts: Not a valid aware datetime."),
    (with_(open=0), "open: Must be greater than 0."),
    (with_(open="abc"), "open: Not a valid number."),
    (with_(extra=1), "extra: Unknown field."),
])
def test_invalid_records_get_the_schema_reason(record: dict, reason: str) -> None:
    assert BARS.validate_one(record) == (None, reason)


def test_a_field_error_does_not_hide_another_records_ohlc_error() -> None:
    # marshmallow's many=True skips @validates_schema for the whole batch once any record has a field error.
    result = BARS.validate([with_(volume="x"), with_(high=1.0)])
    assert [r.reason for r in result.rejected] == ["volume: Not a valid number.",
                                                   "high 1.0 is below max(open, close, low) = 11.0"]


def test_duplicate_keys_in_one_payload_are_rejected_not_merged() -> None:
    result = BARS.validate([GOOD, with_(close=11.5)])
    assert len(result.valid) == 1 and result.valid[0]["close"] == 11.0
    assert "duplicate" in result.rejected[0].reason and result.rejected[0].record_no == 1


# -------------------------------------------------------------------------------------------------------
# The fast path must agree with the schema on every record, bad ones included.

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-10, max_value=10**9),
    st.sampled_from(["1.5", "NaN", "abc", "", None, True, "1e999", " 3 "]),
)
timestamps = st.one_of(
    st.datetimes(timezones=st.sampled_from([UTC, None])).map(lambda d: d.isoformat()),
    st.sampled_from(["2024-01-02", "2024-01-02T00:00:00Z", "20240102T000000Z", "nope", "", "2024-13-01T00:00Z"]),
    st.integers(), st.none(),
)
records = st.fixed_dictionaries(
    {"symbol": st.sampled_from(["AAPL", "BRK.B", "BTC-USD", "aapl", "", 5]),
     "interval": st.sampled_from(["1d", "1m", "2d", None]), "ts": timestamps,
     "open": numbers, "high": numbers, "low": numbers, "close": numbers, "volume": numbers,
     "source": st.sampled_from(["alpaca", None, 3])},
    optional={"extra": st.integers()},
)
plausible = st.builds(
    lambda o, spread_up, spread_down, c_frac, v, ts: {
        "symbol": "AAPL", "interval": "1d", "ts": ts, "open": o, "high": max(o, o * c_frac) + spread_up,
        "low": min(o, o * c_frac) - spread_down, "close": o * c_frac, "volume": v, "source": "sim"},
    st.floats(min_value=0.01, max_value=1e6), st.floats(min_value=-1, max_value=10),
    st.floats(min_value=-1, max_value=10), st.floats(min_value=0.5, max_value=1.5),
    st.one_of(st.floats(min_value=-10, max_value=1e9), st.integers(min_value=-5, max_value=10**9)),
    st.datetimes(timezones=st.sampled_from([UTC, None])).map(lambda d: d.isoformat()),
)


def schema_verdict(record: dict) -> tuple[dict | None, str | None]:
    from marshmallow import ValidationError

    from stockpulse.datatypes.base import reason_from_messages

    try:
        return BARS.schema.load(record), None
    except ValidationError as exc:
        return None, reason_from_messages(exc.messages)


@settings(max_examples=600, deadline=None)
@given(st.one_of(records, plausible))
def test_fast_path_gives_the_schema_verdict(record: dict) -> None:
    fast = fast_validate(dict(record))
    slow, reason = schema_verdict(dict(record))
    if fast is not None:
        assert reason is None, f"fast path accepted what the schema rejects: {reason}"
        assert fast == normalise(slow)
    # Through the public entry point verdicts and reasons are the schema's.
    canonical, public_reason = BARS.validate_one(dict(record))
    assert public_reason == reason
    assert (canonical is None) == (slow is None)
