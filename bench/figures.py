"""Figures (one measured number with its reference and goals), statistics and the table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Goal:
    """`value <= limit` (at_most) or `value >= limit`."""

    limit: float
    at_most: bool = True

    def met(self, value: float) -> bool:
        return value <= self.limit if self.at_most else value >= self.limit

    def __str__(self) -> str:
        return f"{'<=' if self.at_most else '>='} {self.limit:g}"


@dataclass(frozen=True)
class Figure:
    """One number of ours, the same number of the reference, and the goals on both."""

    name: str
    value: float
    unit: str
    reference: float | None = None
    goal: Goal | None = None
    ratio_goal: Goal | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.reference is None or self.reference == 0:
            return None
        return self.value / self.reference

    @property
    def met(self) -> bool | None:
        checks = [g.met(v) for g, v in ((self.goal, self.value), (self.ratio_goal, self.ratio)) if g and v is not None]
        return all(checks) if checks else None

    def to_json(self) -> dict:
        data = asdict(self)
        data["goal"] = str(self.goal) if self.goal else None
        data["ratio_goal"] = str(self.ratio_goal) if self.ratio_goal else None
        data["ratio"] = self.ratio
        data["met"] = self.met
        return data


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"


def _goal_text(fig: Figure) -> str:
    parts = [f"{fig.goal} {fig.unit}"] if fig.goal else []
    if fig.ratio_goal:
        parts.append(f"ratio {fig.ratio_goal}")
    return ", ".join(parts) or "-"


def table(figures: Sequence[Figure]) -> str:
    """A plain-text table: figure, ours, goal, reference, ratio, met."""
    header = ("figure", "ours", "unit", "goal", "reference", "ratio", "met")
    rows = [header] + [
        (
            f.name,
            _num(f.value),
            f.unit,
            _goal_text(f),
            _num(f.reference),
            _num(f.ratio),
            {True: "yes", False: "NO", None: ""}[f.met],
        )
        for f in figures
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
