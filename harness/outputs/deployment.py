"""The deployment table of a run that holds localizers under ONNX Runtime (`--runtime`): model × runtime → bit
accuracy (95 % CI), the tilt sweep's min–max, agreement with the same checkpoint run eagerly (the share of
sample-tilts whose bits are identical, from records.csv), batch-1 p50/p95 ms and MiB on disk (latency.json, else
the run's exported files), and a plot of accuracy against latency, one point per model and runtime."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tabulate import tabulate  # noqa: E402

from harness.core.constants import ORACLE  # noqa: E402
from harness.core.metrics import METRICS, heading  # noqa: E402

RUNTIME_LABELS = {"torch": "eager", "onnxruntime": "ORT fp32", "onnxruntime-int8": "ORT int8"}
PLOT = "plots/bit_acc_vs_deployed_latency.png"


def _localizers(config: dict) -> list[dict]:
    return [dict(m, runtime=m.get("runtime", "torch"), label=m.get("name") or m["arch"])
            for m in config.get("localizers", [])]


def _twin_key(m: dict) -> tuple:
    """What makes two localizers the same network: architecture, checkpoint, input size, flip test."""
    return m["arch"], m.get("ckpt"), m.get("input_size"), bool(m.get("flip_test"))


def agreement(records_csv: Path, pairs: dict[str, str]) -> dict[str, float | None]:
    """For each model → its eager twin: the share of the twin's sample-tilts (predicted ROI) whose bits the model
    reproduces exactly (a row without bits agrees only with a row without bits)."""
    if not records_csv.is_file() or not pairs:
        return {}
    rows: dict[str, dict[tuple, str]] = {}
    with records_csv.open(newline="") as f:
        for r in csv.DictReader(f):
            if r.get("roi_source") != "predicted" or r["model"] not in set(pairs) | set(pairs.values()):
                continue
            key = (r["sample_id"], r["tilt_deg"], r.get("condition", ""), r.get("severity", ""))
            rows.setdefault(r["model"], {})[key] = r.get("bits") or f"<{r['status']}>"
    out = {}
    for model, twin in pairs.items():
        mine, ref = rows.get(model, {}), rows.get(twin, {})
        out[model] = sum(mine.get(k) == v for k, v in ref.items()) / len(ref) if ref else None
    return out


def _disk_mib(run_dir: Path, m: dict, checkpoint_sha: str | None) -> float | None:
    """Size of what the model runs from: its exported file in `<run>/deploy/` (by card), a team's own .onnx file,
    or the checkpoint for eager."""
    if m["runtime"] != "torch" and m["arch"] != "onnx":
        suffix = ".int8.onnx" if m["runtime"] == "onnxruntime-int8" else ".onnx"
        for card_file in sorted((run_dir / "deploy").glob("*.onnx.json")):
            card = json.loads(card_file.read_text())
            if card.get("runtime") == m["runtime"] and card.get("source_sha256") == checkpoint_sha \
                    and card["file"].endswith(suffix) and card.get("input_size") == m.get("input_size"):
                return card["size_bytes"] / 2**20
        return None
    path = Path(m["ckpt"]) if m.get("ckpt") else None
    return path.stat().st_size / 2**20 if path is not None and path.is_file() else None


def deployment_rows(summary, run_dir: Path, latency_of) -> list[dict]:
    """One row per localizer of a run holding at least one non-eager runtime; [] otherwise."""
    config = summary.provenance.config
    models = _localizers(config)
    if all(m["runtime"] == "torch" for m in models):
        return []
    eager = {_twin_key(m): m["label"] for m in models if m["runtime"] == "torch"}
    pairs = {m["label"]: eager[_twin_key(m)] for m in models if m["runtime"] != "torch" and _twin_key(m) in eager}
    agree = agreement(run_dir / "records.csv", pairs)
    by_model = {r.model: r for r in summary.results if r.roi_source == "predicted" and r.model != ORACLE}
    checkpoints = summary.provenance.checkpoints
    rows = []
    for m in models:
        r = by_model.get(m["label"])
        if r is None:
            continue
        lat = latency_of(m["label"]) or {}
        mib = lat.get("mib_on_disk")
        rows.append({"model": m["label"], "arch": m["arch"], "runtime": m["runtime"], "twin": pairs.get(m["label"]),
                     "bit_acc": r.bit_acc.mean, "ci95": r.bit_acc.ci95, "tilt_min": r.tilt_min,
                     "tilt_max": r.tilt_max, "agreement": 1.0 if m["runtime"] == "torch" else agree.get(m["label"]),
                     "p50_ms": lat.get("p50_ms"), "p95_ms": lat.get("p95_ms"),
                     "mib": mib if mib is not None else _disk_mib(run_dir, m, checkpoints.get(m["label"]))})
    return sorted(rows, key=lambda d: (d["arch"], d["twin"] or d["model"], list(RUNTIME_LABELS).index(d["runtime"])))


def _pct(x, digits: int = 2) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f}"


def deployment_table(rows: list[dict], tilts: tuple[float, ...]) -> str:
    body = [[d["model"], RUNTIME_LABELS.get(d["runtime"], d["runtime"]),
             f"{_pct(d['bit_acc'])} ± {_pct(d['ci95'])}", f"{_pct(d['tilt_min'], 1)}–{_pct(d['tilt_max'], 1)}",
             "eager" if d["runtime"] == "torch" else _pct(d["agreement"], 1),
             "—" if d["p50_ms"] is None else f"{d['p50_ms']:.1f} / {d['p95_ms']:.1f}",
             "—" if d["mib"] is None else f"{d['mib']:.2f}"] for d in rows]
    lo, hi = (f"{t:g}".replace("-", "−") for t in (min(tilts), max(tilts)))
    sweep = f"{lo}° min–max %" if lo == hi else f"{lo}°~{hi}° min–max %"
    headers = ["model", "runtime", f"{heading('bit_acc')} (± 95 %)", f"{sweep} {METRICS['tilt_min'].arrow}",
               "same bits as eager % ↑", heading("latency_ms"), "MiB on disk ↓"]
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def plot_deployment(rows: list[dict], path: Path) -> bool:
    points = [d for d in rows if d["p50_ms"] is not None and d["bit_acc"] is not None]
    if not points:
        return False
    fig, ax = plt.subplots(figsize=(6.8, 4.2), dpi=100)
    markers = {"torch": "o", "onnxruntime": "s", "onnxruntime-int8": "^"}
    for runtime, marker in markers.items():
        mine = [d for d in points if d["runtime"] == runtime]
        if mine:
            ax.scatter([d["p50_ms"] for d in mine], [100 * d["bit_acc"] for d in mine], marker=marker,
                       label=RUNTIME_LABELS[runtime])
            for d in mine:
                ax.annotate(d["twin"] or d["model"], (d["p50_ms"], 100 * d["bit_acc"]), fontsize=7)
    ax.set(xscale="log", xlabel="batch-1 p50 latency, CPU (ms, log)", ylabel="mean bit accuracy (%)",
           title="accuracy against latency, as deployed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return True


def deployment_section(summary, run_dir: Path, report_dir: Path, latency_of) -> str | None:
    """The markdown section (table, notes, plot written under `report_dir`), or None for a run with no runtime."""
    rows = deployment_rows(summary, run_dir, latency_of)
    if not rows:
        return None
    versions = summary.provenance.versions
    text = ("## Deployment: eager against ONNX Runtime\n\n"
            f"The same checkpoints under each runtime (onnxruntime {versions.get('onnxruntime', '?')}, BatchNorm at "
            "its running statistics, CPU). *Same bits as eager*: the share of sample-tilts whose 100 bits equal the "
            "eager model's exactly (records.csv). Latency: batch 1, a 400×400 photo, the suite's thread count; MiB "
            "on disk: the .onnx file, or eager's checkpoint (the zoo ships fp16 weights).\n\n"
            + deployment_table(rows, summary.provenance.tilts))
    if plot_deployment(rows, report_dir / PLOT):
        text += f"\n\n![accuracy against latency, as deployed]({PLOT})"
    return text
