"""Generate dashboards/*.json from dashboards/src/hiw_dashboards (grafana-foundation-sdk).

.venv/bin/python dashboards/generate.py          # write the files
.venv/bin/python dashboards/generate.py --check  # exit 1 if one is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from hiw_dashboards.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
