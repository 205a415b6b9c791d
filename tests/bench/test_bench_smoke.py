"""Smoke run of the benchmarks with tiny sizes, so they cannot rot.

Not a performance test: it checks that every cheap scenario runs end to end
against a real vault subprocess (SQLite and MariaDB) and reports positive
numbers, not that they meet their goals.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from support import MARIADB_URL

ROOT = Path(__file__).resolve().parents[2]


def run_bench(out: Path) -> subprocess.CompletedProcess[str]:
    # --cheap: the scenarios bench.registry marks cheap (all the vault-only ones).
    argv = [sys.executable, "-m", "bench", "--quick", "--cheap", "--out", str(out), "--mariadb-url", MARIADB_URL]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, env=os.environ.copy())


def test_quick_bench_reports_positive_figures(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = run_bench(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    figures = results["figures"]
    scenarios = results["options"]["scenarios"]
    assert {"crypto", "vault_commit", "restore"} <= set(scenarios)
    for scenario in scenarios:
        assert any(name.startswith(scenario + ".") for name in figures), (scenario, sorted(figures))
    for name, fig in figures.items():
        for key in ("value", "reference", "ratio"):
            if fig[key] is not None:
                assert math.isfinite(fig[key]) and fig[key] > 0, (name, key, fig[key])
    assert any(f["reference"] is not None for f in figures.values())
    machine = results["machine"]
    assert machine["cores"] >= 1 and machine["python"] and machine["sqlite"] and machine["cpu_model"]
    assert "figure" in proc.stdout and "ratio" in proc.stdout
