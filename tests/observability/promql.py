"""Just enough PromQL reading to list the metric names a Grafana panel query uses."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
            "group_right", "inf", "nan", "atan2"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w$.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()")


def metric_names(expr: str) -> set[str]:
    """Metric names selected by ``expr`` (function names, keywords, label names and durations excluded)."""
    text = _STRING.sub('""', expr)
    text = _BRACES.sub("", text)
    text = _BRACKETS.sub("", text)
    text = _GROUPING.sub("", text)
    return {name for name in _IDENTIFIER.findall(text) if name.lower() not in KEYWORDS}


def substitute_variables(expr: str) -> str:
    """Grafana's variables replaced by values Prometheus accepts, so the query can be run as is."""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", "1m", expr)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def dashboard_queries(folder: Path) -> Iterator[tuple[str, str, str]]:
    """(dashboard title, panel title, PromQL) for every target of every panel, rows included."""
    for path in sorted(folder.glob("*.json")):
        board = json.loads(path.read_text())
        panels = list(board.get("panels", []))
        while panels:
            panel = panels.pop(0)
            panels.extend(panel.get("panels", []))
            for target in panel.get("targets", []):
                if target.get("expr"):
                    yield board["title"], panel.get("title", "?"), target["expr"]
        for variable in board.get("templating", {}).get("list", []):
            query = variable.get("query")
            if isinstance(query, dict):
                query = query.get("query")
            if variable.get("type") == "query" and isinstance(query, str):
                match = re.match(r"label_values\((\w+)\s*,\s*\w+\)", query.strip())
                if match:
                    yield board["title"], f"variable {variable['name']}", match.group(1)
