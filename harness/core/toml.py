"""The TOML reader for every version the project claims: `tomllib` from Python 3.11, its backport `tomli` before."""
from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover  (Python 3.10)
    import tomli as tomllib

__all__ = ["tomllib"]
