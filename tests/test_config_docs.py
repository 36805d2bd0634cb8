"""docs/configuration.md's key reference is generated from the schemas and kept current."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from stockpulse.config import PipelineOptionsSchema, load_settings
from stockpulse.config_docs import BEGIN, END, keys, render, update
from stockpulse.errors import ConfigError
from tests.conftest import ROOT


def test_checked_in_reference_is_current() -> None:
    assert update(ROOT / "docs" / "configuration.md", check=True), "run `stockpulse config docs`"


def test_every_key_is_described_with_its_variable() -> None:
    documented = {k.path: k for k in keys()}
    assert all(k.description for k in documented.values()), [p for p, k in documented.items() if not k.description]
    assert documented["providers.<name>.api_key"].secret
    assert documented["providers.<name>.api_key"].env == "STOCKPULSE_PROVIDERS__<NAME>__API_KEY"
    assert documented["stages.fetch.max_retries"].default == "`5`"
    assert documented["pipelines.<name>.options.silence_s"].default == "`30`"  # from StreamOptions
    assert documented["pipelines.<name>.data_type"].default == "required"
    assert not documented["redis_url"].secret


def test_stream_options_are_all_accepted() -> None:
    from stockpulse.streams.consumer import StreamOptions

    declared = set(PipelineOptionsSchema().fields)
    assert {f.name for f in dataclasses.fields(StreamOptions)} <= declared


def test_stale_file_is_detected_and_rewritten(tmp_path: Path) -> None:
    doc = tmp_path / "configuration.md"
    doc.write_text(f"# Configuration\n\n{BEGIN}\n| old |\n{END}\n\nafter\n")
    assert not update(doc, check=True)
    assert update(doc)
    assert doc.read_text() == f"# Configuration\n\n{render()}\n\nafter\n"
    assert update(doc, check=True)
    (tmp_path / "plain.md").write_text("no block")
    with pytest.raises(ValueError, match="no generated block"):
        update(tmp_path / "plain.md")


def test_unknown_option_is_refused(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("pipelines:\n  daily_bars:\n    options: {lookback_dayz: 30}\n")
    with pytest.raises(ConfigError, match=r"pipelines\.daily_bars\.options\.lookback_dayz: Unknown field"):
        load_settings({"STOCKPULSE_CONFIG": str(tmp_path / "c.yaml")})
