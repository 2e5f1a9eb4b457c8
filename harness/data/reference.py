"""The reference evaluation set: watermarked scenes (random secrets) and clean scenes in one manifest.

Both halves are made by the scene generator with no tilt of their own, so a tilt sweep's angle is the label's tilt;
the clean half gives the empirical false-positive rate beside the binomial threshold. Each half is a cached
generator folder (`marked/`, `clean/`); the top manifest lists both, ids prefixed by the half.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.data.manifest import manifest_rows, write_manifest
from harness.data.synth import SynthConfig, generate


@dataclass(frozen=True)
class ReferenceSetConfig:
    n_marked: int = 200
    n_clean: int = 50
    seed: int = 1000  # never used for training sets (those use seeds below 1000)
    key: int = 0  # codec key


def reference_set(cfg: ReferenceSetConfig, root: str | Path) -> Path:
    """Generate (or reuse) the set under `root` and return `root`, which holds the combined manifest."""
    root = Path(root)
    halves = [("marked", SynthConfig(kind="random", n=cfg.n_marked, seed=cfg.seed, tilt_range=0.0, key=cfg.key))]
    if cfg.n_clean:
        halves.append(("clean", SynthConfig(kind="clean", n=cfg.n_clean, seed=cfg.seed + 1, tilt_range=0.0,
                                            key=cfg.key)))
    rows = []
    for name, synth in halves:
        generate(synth, root / name, overwrite=True)  # a cache the harness owns: remade when stale
        rows += _prefixed_rows(root / name, name)
    write_manifest(root, rows)
    return root


def _prefixed_rows(folder: Path, prefix: str) -> list[dict[str, str]]:
    rows = manifest_rows(folder)
    for row in rows:
        row["id"] = f"{prefix}/{row['id']}"
        for column in ("file", "mask_file"):
            if row.get(column):
                row[column] = f"{prefix}/{row[column]}"
    return rows
