"""Shared plumbing for the benchmarks: arguments, percentiles, the JSON report line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from actors.logs import configure_logging  # noqa: E402  (importable once ROOT is on the path)


@dataclasses.dataclass
class Outcome:
    """What a simulated run of the swap and placement benchmarks gives: each job's start
    and FIFO turn (by id), the swaps, the time spent loading, and when the last job ended."""

    start: dict[str, float]
    turn: dict[str, float]
    swaps: int
    loading_s: float
    end: float


def parse_args(description: str) -> argparse.Namespace:
    """``--quick`` (under a minute, every figure) and ``--json`` (last line is the report);
    gpulane's own logs from warnings up only, so the figures are not buried."""
    configure_logging("warning")
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="smaller counts, same figures")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object as the last line"
    )
    return parser.parse_args()


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return float(values[0])
    return statistics.quantiles(values, n=1000, method="inclusive")[max(0, int(q * 10) - 1)]


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {"cpus": os.cpu_count(), "python": platform.python_version()}


def goal(metric: str, op: str, target: float, value: float) -> dict[str, Any]:
    """One goal line as ../shared/BENCHMARKS.md describes it."""
    return {"metric": metric, "op": op, "goal": target, "value": round(value, 4)}


def report(
    bench: str, results: dict[str, float], goals: list[dict[str, Any]], as_json: bool
) -> None:
    """Print the goals table (always) and the JSON line (with --json) last."""
    print(f"\ngoals ({bench}):")
    for g in goals:
        met = g["value"] <= g["goal"] if g["op"] == "<=" else g["value"] >= g["goal"]
        print(f"  {'MET ' if met else 'MISS'} {g['metric']} {g['op']} {g['goal']}: {g['value']}")
    if as_json:
        rounded = {k: round(v, 4) for k, v in results.items()}
        print(
            json.dumps({"bench": bench, "machine": machine(), "results": rounded, "goals": goals})
        )
