"""`python -m harness.report`: results → `reports/REPORT.md` and PNG plots.

Pure formatting: the same results give byte-identical markdown.

Reads, from one results folder (`reports/results/full` when the full sweep has run, else `reports/results/quick`):
    robustness/summary.json   figures per (model, ROI source) and the provenance of the evaluation
    cost.json                 params, tensors, GMACs, GFLOPs, fp32 MiB at 400×400 (suites/test_suite_cost.py)
    latency.json              batch-1 latency p50/p95 per model (suites/test_suite_latency.py)
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tabulate import tabulate  # noqa: E402


class ReportError(Exception):
    """The results needed for the report are missing or unreadable."""


@dataclass(frozen=True)
class Results:
    folder: Path
    summary: dict
    cost: dict
    latency: dict

    def entries(self, roi_source: str) -> list[dict]:
        """Models in table order: the teacher first, then the students by name."""
        rows = [e for e in self.summary["results"] if e["roi_source"] == roi_source and e["model"] != "oracle"]
        return sorted(rows, key=lambda e: (e["role"] != "teacher", e["model"]))

    def oracle(self) -> dict | None:
        return next((e for e in self.summary["results"] if e["model"] == "oracle"), None)


def default_results() -> Path:
    full = Path("reports/results/full")
    return full if (full / "robustness" / "summary.json").is_file() else Path("reports/results/quick")


def load_results(folder: Path) -> Results:
    return Results(folder, _read_json(folder / "robustness" / "summary.json"),
                   _read_json(folder / "cost.json", optional=True).get("models", {}),
                   _read_json(folder / "latency.json", optional=True))


def _read_json(path: Path, optional: bool = False) -> dict:
    if not path.is_file():
        if optional:
            return {}
        raise ReportError(f"missing results file {path} (run `pytest suites/` or `pytest suites/ --benchmark` first)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f"corrupt results file {path}: {err}") from err


# ------------------------------------------------------------------------------------------------- tables


def _pct(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f}"


def _num(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def _teacher(results: Results) -> dict | None:
    return next((e for e in results.entries("predicted") if e["role"] == "teacher"), None)


def main_table(results: Results) -> str:
    teacher = _teacher(results)
    rows = []
    for e in results.entries("predicted"):
        cost, lat = results.cost.get(e["model"], {}), results.latency.get(e["model"], {})
        acc = _pct(e["bit_acc"]["mean"], 2)
        if e["role"] == "student" and teacher is not None:
            acc = f"{acc}/{_pct(teacher['bit_acc']['mean'], 2)}"
        det = next((d for d in e["detection"] if d["fpr"] == 1e-3), {})
        rows.append([e["model"], e["role"], cost.get("arch", "—"), _input(cost),
                     _num(cost.get("params") and cost["params"] / 1e6, ".2f"), cost.get("tensors", "—"),
                     _num(cost.get("total_gmacs"), ".2f"), _num(cost.get("gflops"), ".2f"),
                     _num(cost.get("input_gmacs"), ".2f"), _num(cost.get("fp32_mib"), ".2f"),
                     f"{_num(lat.get('p50_ms'), '.1f')} / {_num(lat.get('p95_ms'), '.1f')}",
                     acc, f"{_pct(e['tilt_min'])}–{_pct(e['tilt_max'])}", _pct(e["word_acc"]),
                     _pct(det.get("tpr")), _num(e["mask_iou"], ".3f")])
    # @400 compares architectures on the photo's side; @input is what the localizer spends per photo at its own input
    # size, which differs between models (a teacher may read at 160 and its students at 128), flip test included
    headers = ["model", "role", "arch", "input", "params (M)", "tensors", "GMACs@400", "GFLOPs@400 (2×MACs)",
               "GMACs@input", "fp32 MiB", "latency p50 / p95 ms", "bit acc % (student/teacher)",
               "−5°~5° (min–max) %", "word acc %", "TPR@FPR 1e-3 %", "mean IoU"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _input(cost: dict) -> str:
    side = cost.get("input_size", "—")
    return f"{side} + flip" if cost.get("flip_test") else str(side)


def tilt_table(results: Results) -> str:
    entries = results.entries("predicted") + ([results.oracle()] if results.oracle() else [])
    tilts = sorted({float(t) for e in entries for t in e["per_tilt"]})
    rows = [[e["model"] + (" (GT mask ROI)" if e["model"] == "oracle" else "")]
            + [_pct(e["per_tilt"].get(f"{t:g}")) for t in tilts] for e in entries]
    return tabulate(rows, headers=["model"] + [f"{t:+g}°" for t in tilts], tablefmt="github", disable_numparse=True)


def ablation_table(results: Results) -> str:
    oracle = {e["model"]: e for e in results.summary["results"] if e["roi_source"] == "oracle"}
    rows = []
    for e in results.entries("predicted"):
        o = oracle.get(e["model"]) or results.oracle()
        gap = None if o is None else o["bit_acc"]["mean"] - e["bit_acc"]["mean"]
        rows.append([e["model"], _pct(e["bit_acc"]["mean"], 2), _pct(o and o["bit_acc"]["mean"], 2), _pct(gap, 2),
                     _pct(e["blind_bit_acc"], 2), _pct(e["roi_empty_rate"], 2), _num(e["mask_iou"], ".3f")])
    headers = ["model", "predicted ROI %", "oracle ROI %", "localizer loss (points)", "blind angle choice %",
               "ROI empty %", "mean IoU"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def key_results(results: Results) -> str:
    """The best student per architecture, beside the teacher (the seed's 重点结果筛选)."""
    best: dict[str, dict] = {}
    for e in results.entries("predicted"):
        arch = results.cost.get(e["model"], {}).get("arch", e["model"])
        if e["role"] == "student" and (arch not in best or e["bit_acc"]["mean"] > best[arch]["bit_acc"]["mean"]):
            best[arch] = e
    teacher = _teacher(results)
    chosen = ([teacher] if teacher else []) + [best[a] for a in sorted(best)]
    rows = [[e["model"], e["role"], _pct(e["bit_acc"]["mean"], 2) + f" ± {_pct(e['bit_acc']['ci95'], 2)}",
             f"{_pct(e['tilt_min'])}–{_pct(e['tilt_max'])}", *_loss_to_teacher(e, teacher)] for e in chosen]
    headers = ["model", "role", "bit acc % (95 % CI)", "−5°~5° (min–max) %", "points below the teacher (mean)",
               "worst tilt (points below)"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _loss_to_teacher(entry: dict, teacher: dict | None) -> list[str]:
    """What a student loses: the teacher's bit accuracy minus the student's, on average and at the tilt where the
    gap is widest (negative: the student reads higher). Only tilts both were measured at count."""
    if teacher is None or entry is teacher:
        return ["—", "—"]
    mean_gap = _pct(teacher["bit_acc"]["mean"] - entry["bit_acc"]["mean"], 2)
    gaps = {t: teacher["per_tilt"][t] - entry["per_tilt"][t] for t in teacher["per_tilt"] if t in entry["per_tilt"]}
    if not gaps:
        return [mean_gap, "—"]
    worst = max(gaps, key=lambda t: (gaps[t], -float(t)))  # ties: the lowest tilt, so the text never flips
    return [mean_gap, f"{_pct(gaps[worst], 2)} at {float(worst):+g}°"]


def field_cost_table(results: Results) -> str:
    rows = [[name.split(":", 1)[1], f"{c['params']:,}", c["tensors"], f"{c['conv_gmacs']:.2f}",
             f"{c['total_gmacs']:.2f}", f"{c['gflops']:.2f}", f"{c['fp32_mib']:.2f}"]
            for name, c in sorted(results.cost.items()) if name.startswith("field:")]
    headers = ["field model (num_classes=1)", "params", "tensors", "conv GMACs", "total GMACs", "GFLOPs (2×MACs)",
               "fp32 MiB"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def provenance_block(results: Results) -> str:
    p = results.summary["provenance"]
    cfg = p.get("config", {})
    lines = [f"- results: `{results.folder.as_posix()}` (mode `{cfg.get('mode')}`, BatchNorm mode "
             f"`{cfg.get('bn_mode')}`, tilts {cfg.get('tilts')}, search angles {cfg.get('angles')})",
             f"- git commit: `{p.get('git_commit')}`; evaluated {p.get('date')}",
             f"- versions: {', '.join(f'{k} {v}' for k, v in sorted(p.get('versions', {}).items()))}",
             f"- device: {p.get('device')}; torch threads: {p.get('torch_threads')}",
             f"- dataset sha256: `{p.get('dataset_hash')}`"]
    lines += [f"- checkpoint `{name}`: `{sha or 'none (built-in weights)'}`"
              for name, sha in sorted(p.get("checkpoints", {}).items())]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------- plots


def plot_tilts(results: Results, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8.4, 4.0), dpi=100)
    for e in results.entries("predicted") + ([results.oracle()] if results.oracle() else []):
        tilts = sorted(e["per_tilt"], key=float)
        ax.plot([float(t) for t in tilts], [100 * e["per_tilt"][t] for t in tilts], marker="o",
                linestyle="--" if e["model"] == "oracle" else "-", label=e["model"])
    ax.set(xlabel="camera tilt (°)", ylabel="bit accuracy (%)", title="decoder2 bit accuracy against tilt")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never over a curve
    _save(fig, path)


def plot_cost(results: Results, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for e in results.entries("predicted"):
        cost = results.cost.get(e["model"])
        if cost:
            ax.scatter(cost["gflops"], 100 * e["bit_acc"]["mean"])
            ax.annotate(e["model"], (cost["gflops"], 100 * e["bit_acc"]["mean"]), fontsize=8)
    ax.set(xscale="log", xlabel="GFLOPs at 400×400 (2×MACs, log)", ylabel="mean bit accuracy (%)",
           title="accuracy against cost")
    ax.grid(alpha=0.3)
    _save(fig, path)


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})  # no version stamp: the same results give the same bytes
    plt.close(fig)


# ------------------------------------------------------------------------------------------------- render


def render(results: Results, plots: dict[str, str]) -> str:
    sections = [
        "# Watermark decoder benchmark",
        "Every figure comes from the results named under Provenance. Bit accuracy is decoder2's: the photo fitted "
        "to 400×400, searched at 0/+3/−3°, the angle with the lowest BCE against the true secret kept, bits = "
        "p ≥ 0.5; a sample whose ROI was empty counts as 0 %.",
        "## Main table\n\n" + main_table(results),
        "## Bit accuracy per tilt (%)\n\n" + tilt_table(results),
        f"![bit accuracy against tilt]({plots['tilt']})",
        "## Localizer or decoder? Predicted ROI against the ground-truth-mask ROI\n\n" + ablation_table(results),
        "## Key results (best student per architecture)\n\n" + key_results(results),
        f"![accuracy against cost]({plots['cost']})",
    ]
    if any(name.startswith("field:") for name in results.cost):
        sections.append("## The field's models at 400×400\n\n" + field_cost_table(results))
    sections.append("## Provenance\n\n" + provenance_block(results))
    return "\n\n".join(sections) + "\n"


def write_report(results_dir: Path, out: Path) -> Path:
    results = load_results(results_dir)
    plots = {"tilt": "plots/bit_acc_vs_tilt.png", "cost": "plots/bit_acc_vs_gflops.png"}
    plot_tilts(results, out.parent / plots["tilt"])
    plot_cost(results, out.parent / plots["cost"])
    out.write_text(render(results, plots))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.report", description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=None, help="results folder (default: full, else quick)")
    ap.add_argument("--out", type=Path, default=Path("reports/REPORT.md"))
    args = ap.parse_args(argv)
    try:
        path = write_report(args.results or default_results(), args.out)
    except ReportError as err:
        print(f"report: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
