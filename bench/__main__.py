"""`python -m bench [--quick] [--only NAME ...] [--out bench/results.json]`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench import machine
from bench.context import BACKENDS, Context
from bench.figures import Figure, table
from bench.registry import SCENARIOS

DEFAULT_MARIADB = os.environ.get("VAULT_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny sizes (the test suite's smoke run)")
    p.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), metavar="NAME", help="run only these scenarios")
    p.add_argument("--cheap", action="store_true", help="run only the scenarios marked cheap")
    p.add_argument("--backend", action="append", choices=BACKENDS, help="databases for the vault (default: both)")
    p.add_argument("--out", type=Path, default=Path("bench/results.json"), help="results JSON (bench/results.json)")
    p.add_argument("--mariadb-url", default=DEFAULT_MARIADB, help="MariaDB server URL [VAULT_TEST_MARIADB_URL]")
    p.add_argument("--profile", type=Path, metavar="DIR", help="sample every vault process with py-spy into DIR")
    p.add_argument(
        "--logs", type=Path, default=Path("bench/out"), help="vault logs go here (bench/out, ignored by git)"
    )
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    return p.parse_args(argv)


def selected(args: argparse.Namespace) -> list[str]:
    names = args.only or list(SCENARIOS)
    return [n for n in names if SCENARIOS[n].cheap] if args.cheap else names


async def run_all(ctx: Context, names: list[str]) -> tuple[list[Figure], dict[str, float]]:
    figures: list[Figure] = []
    seconds: dict[str, float] = {}
    for name in names:
        print(f"== {name}: {SCENARIOS[name].summary}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        got = await SCENARIOS[name].runner()(ctx)
        seconds[name] = round(time.perf_counter() - start, 2)
        print(table(got) + "\n", file=sys.stderr, flush=True)
        figures += got
    return figures, seconds


def write_results(path: Path, args: argparse.Namespace, facts: dict, figures: list[Figure], seconds: dict) -> None:
    results = {
        "machine": facts,
        "options": {"quick": args.quick, "scenarios": list(seconds), "backends": args.backend or list(BACKENDS)},
        "scenario_seconds": seconds,
        "figures": {f.name: f.to_json() for f in figures},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for s in SCENARIOS.values():
            print(f"{s.name:18} {'cheap ' if s.cheap else ''}{s.summary}")
        return 0
    facts = machine.facts(args.mariadb_url)
    with tempfile.TemporaryDirectory(prefix="sv-bench-") as tmp:
        args.logs.mkdir(parents=True, exist_ok=True)
        backends = tuple(args.backend or BACKENDS)
        ctx = Context(args.quick, Path(tmp), args.mariadb_url, backends, args.profile, args.logs)
        figures, seconds = asyncio.run(run_all(ctx, selected(args)))
    print(table(figures))
    facts["loadavg_at_end"] = list(os.getloadavg())  # other work on the machine skews absolute figures
    write_results(args.out, args, facts, figures, seconds)
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
