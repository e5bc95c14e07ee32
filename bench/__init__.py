"""Benchmarks of the whole system against baselines run in the same process tree: `python -m bench --help`."""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:  # scripts/ and tests/ (the stack and the fake server) are not installed packages
    sys.path.insert(0, _ROOT)
