"""`python -m bench.report [bench/results.json]`: the results as the Markdown table of the README's
performance section (figure, ours, reference, ratio, goal, met), so that table is regenerated from a
run instead of typed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.figures import _num


def markdown(results: dict) -> str:
    rows = ["| figure | ours | reference | ratio | goal | met |", "|---|---|---|---|---|---|"]
    for fig in results["figures"].values():
        goals = [f"{fig['goal']} {fig['unit']}"] if fig["goal"] else []
        if fig["ratio_goal"]:
            goals.append(f"ratio {fig['ratio_goal']}")
        met = {True: "yes", False: "**no**", None: ""}[fig["met"]]
        rows.append(
            f"| `{fig['name']}` | {_num(fig['value'])} {fig['unit']} | {_num(fig['reference'])} | "
            f"{_num(fig['ratio'])} | {', '.join(goals) or '-'} | {met} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0] if args else "bench/results.json")
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        print(f"bench.report: cannot read {path}: {err}", file=sys.stderr)
        return 2
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
