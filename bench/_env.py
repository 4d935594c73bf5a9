"""The environment every bench script sets up before it imports quantmill: import it first (``import _env``).

The repo goes on ``sys.path`` (the scripts run as ``python bench/<name>.py`` from anywhere),
the Hub stays offline (the benchmarks use the bundled demo model and data), and Prefect and
tqdm stay quiet so the printed figures are readable. Each is a default the caller's
environment overrides.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
for name, value in {
    "HF_HUB_OFFLINE": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "ERROR",
    "TQDM_DISABLE": "1",
}.items():
    os.environ.setdefault(name, value)
