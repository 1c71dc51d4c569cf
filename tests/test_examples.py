"""The README's main-job example runs and prints the three seed schedules."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_reconnect_schedules_example_prints_the_seed_schedules():
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "reconnect_schedules.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    out = result.stdout
    assert "Fixed(delay=60.0)" in out
    assert "attempt   13: wait  34.1 min" in out  # 2048 s, the 12th wait after the first
    assert "BLOCKED" in out
    assert "attempt  336: wait    30 min, offline for 7 d" in out
    assert "attempt  337: wait       1 d, offline for 8 d" in out
