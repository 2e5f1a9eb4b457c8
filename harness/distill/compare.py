"""Distilled students against their no-KD baselines, over seeds, on one held-out set:

    python -m harness.distill compare --data data/eval --tilts=-4,0,4 --out runs/compare runs/*_kd_s* runs/*_nokd_s*

Every run's best `student.pt` is evaluated in one decoder2 run (batched evaluator, BatchNorm in eval mode, predicted
ROI); runs are grouped by (architecture, with or without a distiller) and each group's mean bit accuracy is given as
mean ± std over its seeds, beside the per-seed figures.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tabulate import tabulate

from harness.run import EvalConfig, ModelSpec, evaluate


def run_spec(run: Path) -> tuple[ModelSpec, tuple[str, str, int]]:
    config = json.loads((run / "config.json").read_text())
    kd = "KD" if config.get("distiller") else "no KD"
    spec = ModelSpec(arch=config["model"]["name"], ckpt=str(run / "student.pt"),
                     input_size=config["model"]["input_size"], role="student", name=run.name)
    return spec, (config["model"]["name"], kd, config["run"]["seed"])


def compare(runs: list[Path], data: str, tilts: tuple[float, ...], out: Path) -> str:
    specs, groups = zip(*(run_spec(r) for r in runs))
    cfg = EvalConfig(localizers=tuple(specs), sdecoder=ModelSpec("reference_sdecoder"), data=data, tilts=tilts,
                     bn_mode="eval", oracle=False, mode="compare")
    summary = evaluate(cfg, out)
    acc = {row.model: row.bit_acc.mean for row in summary.rows("predicted")}
    table: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for spec, (arch, kd, seed) in zip(specs, groups):
        table.setdefault((arch, kd), []).append((seed, acc[spec.label]))
    rows = []
    for (arch, kd), seeds in sorted(table.items()):
        values = np.array([v for _, v in sorted(seeds)]) * 100
        rows.append([arch, kd, len(values), f"{values.mean():.2f} ± {values.std(ddof=1) if len(values) > 1 else 0:.2f}",
                     ", ".join(f"s{s}: {100 * v:.2f}" for s, v in sorted(seeds))])
    return tabulate(rows, headers=["student", "training", "seeds", "bit acc % (mean ± std)", "per seed"],
                    tablefmt="github", disable_numparse=True)
