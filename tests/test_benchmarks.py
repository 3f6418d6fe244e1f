"""The benchmark command runs and prints every row (no timing assertions here: performance
targets live in benchmarks/, measured as ratios)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REQUIRE_REFERENCE, ROOT

ROWS = [
    "cold start",
    "real model",
    "toy pipeline trace",
    "JSON export",
    "heatmap render",
    "long input",
    "heads on a cluster",
    "memory estimate",
]


def test_quick_benchmark_prints_every_row(tmp_path):
    bindir = Path(sys.executable).parent
    if not (bindir / "attn-cli").exists():
        if REQUIRE_REFERENCE:
            pytest.fail("attn-cli is not installed next to this Python")
        pytest.skip("attn-cli is not installed next to this Python (pip install .)")
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = tmp_path / "rows.json"
    p = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert p.returncode == 0, p.stderr
    table = [line for line in p.stdout.splitlines() if line.startswith("| ") and "---" not in line][
        1:
    ]
    assert [next(r for r in ROWS if line[2:].startswith(r)) for line in table] == ROWS
    rows = json.loads(out.read_text())
    for row in rows:
        if REQUIRE_REFERENCE:
            assert row["skipped"] is None, row
        if row["skipped"] is None:
            assert row["ours"] > 0 and row["ratio"] > 0
