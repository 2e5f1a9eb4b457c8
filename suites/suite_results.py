"""Where the suites leave their figures: `reports/results/<mode>/<name>`, read by the report."""
from __future__ import annotations

import json
from pathlib import Path


def write_result(settings, name: str, doc: dict) -> Path:
    path = settings.out / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return path
