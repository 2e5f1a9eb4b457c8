"""`python -m harness.report`: a results folder → `REPORT.md` and PNG plots (`plots/`) in an out folder.

Pure formatting: the same results give byte-identical markdown.

A results folder is either an evaluation run (`python -m harness.eval --out DIR`: `summary.json` and `records.csv`
directly in it, optionally `cost.json` / `latency.json` beside them) or a suites results folder
(`reports/results/<mode>`):
    robustness/summary.json   figures per (model, ROI source) and the provenance of the evaluation
    cost.json                 params, tensors, GMACs, GFLOPs, fp32 MiB at 400×400 (suites/test_suite_cost.py)
    latency.json              batch-1 latency p50/p95 per model (suites/test_suite_latency.py)

Cost and latency join a model's accuracy only when the checkpoint sha256 they record is the one the summary's
provenance evaluated under that name; otherwise the table leaves them out and says why. Headings name the sweep the
provenance records (tilts, search angles), never a fixed one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tabulate import tabulate  # noqa: E402

from harness.core.constants import ORACLE  # noqa: E402
from harness.core.metrics import METRICS  # noqa: E402
from harness.outputs.deployment import deployment_section  # noqa: E402
from harness.outputs.profile import conditions_section  # noqa: E402
from harness.run.results import ResultsFormatError, Summary, SummaryRow, read_summary  # noqa: E402

NA = "n/a"  # no such figure exists (no ground-truth mask: no oracle ROI, no IoU), unlike "—", not measured


class ReportError(Exception):
    """The results needed for the report are missing or unreadable."""


@dataclass(frozen=True)
class Results:
    folder: Path
    summary: Summary
    cost: dict  # model → figures, as cost.json records them
    latency: dict  # model → figures, as latency.json records them

    def entries(self, roi_source: str) -> list[SummaryRow]:
        """Models in table order: the teacher first, then the students by name."""
        rows = [e for e in self.summary.results if e.roi_source == roi_source and e.model != ORACLE]
        return sorted(rows, key=lambda e: (e.role != "teacher", e.model))

    def oracle(self) -> SummaryRow | None:
        return next((e for e in self.summary.results if e.model == ORACLE), None)

    def cost_of(self, model: str) -> dict:
        """The model's cost figures, or {} when cost.json measured another checkpoint (or records none)."""
        return self._joined(self.cost, model)

    def latency_of(self, model: str) -> dict:
        return self._joined(self.latency, model)

    def _joined(self, table: dict, model: str) -> dict:
        doc = table.get(model)
        return doc if doc and self._mismatch(doc, model) is None else {}

    def _mismatch(self, doc: dict, model: str) -> str | None:
        """Why `doc` (a cost or latency entry) is not the evaluated model's, or None when it is."""
        checkpoints = self.summary.provenance.checkpoints
        if model not in checkpoints:
            return "the summary's provenance records no checkpoint under that name"
        if "checkpoint_sha256" not in doc:
            return "it records no checkpoint sha256"
        if doc["checkpoint_sha256"] != checkpoints[model]:
            return (f"it measured checkpoint {_sha(doc['checkpoint_sha256'])}, the accuracy is of "
                    f"{_sha(checkpoints[model])}")
        return None

    def left_out(self) -> list[str]:
        """One line per model whose cost or latency figures were not joined, saying why."""
        lines = []
        for name, table in (("cost.json", self.cost), ("latency.json", self.latency)):
            for e in self.entries("predicted"):
                doc = table.get(e.model)
                why = self._mismatch(doc, e.model) if doc else None
                if why:
                    lines.append(f"- {name}: `{e.model}` left out: {why}")
        return lines

    @property
    def tilts(self) -> tuple[float, ...]:
        return self.summary.provenance.tilts


def _sha(sha: str | None) -> str:
    return "none (built-in weights)" if sha is None else f"`{sha[:12]}…`"


def default_results() -> Path:
    full = Path("reports/results/full")
    return full if (full / "robustness" / "summary.json").is_file() else Path("reports/results/quick")


def summary_path(folder: Path) -> Path:
    """An evaluation run's summary.json, or a suites results folder's robustness/summary.json."""
    for path in (folder / "summary.json", folder / "robustness" / "summary.json"):
        if path.is_file():
            return path
    raise ReportError(f"missing results file: neither {folder / 'summary.json'} (an evaluation run folder) nor "
                      f"{folder / 'robustness' / 'summary.json'} (a suites results folder) exists (run "
                      "`python -m harness.eval ... --out DIR`, `pytest suites/` or `pytest suites/ --benchmark` first)")


def load_results(folder: Path) -> Results:
    try:
        summary = read_summary(summary_path(folder))
    except ResultsFormatError as err:
        raise ReportError(str(err)) from err
    cost = _read_json(folder / "cost.json", optional=True).get("models", {})
    latency = _read_json(folder / "latency.json", optional=True)
    for path, doc in ((folder / "cost.json", cost), (folder / "latency.json", latency)):
        if not isinstance(doc, dict) or not all(isinstance(v, dict) for v in doc.values()):
            raise ReportError(f"corrupt results file {path}: expected an object of per-model objects")
    return Results(folder, summary, cost, latency)


def _read_json(path: Path, optional: bool = False) -> dict:
    if not path.is_file():
        if optional:
            return {}
        raise ReportError(f"missing results file {path} (run `pytest suites/` or `pytest suites/ --benchmark` first)")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f"corrupt results file {path}: {err}") from err
    if not isinstance(doc, dict):
        raise ReportError(f"corrupt results file {path}: expected an object, got {type(doc).__name__}")
    return doc


# ------------------------------------------------------------------------------------------------- tables


def _pct(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f}"


def _num(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def _iou(x: float | None) -> str:
    return NA if x is None else format(x, ".3f")


def _deg(t: float, sign: bool = False) -> str:
    """A tilt or angle as text with a true minus sign: -5 → "−5", 3 → "3" ("+3" with `sign`)."""
    return (f"{t:+g}" if sign and t != 0 else f"{t:g}").replace("-", "−")


def sweep_heading(results: Results) -> str:
    """The heading of the per-model range over the tilts actually run, e.g. "−5°~5° (min–max) %"."""
    tilts = results.tilts
    lo, hi = min(tilts), max(tilts)
    arrow = METRICS["tilt_min"].arrow
    return f"{_deg(lo)}° (min–max) % {arrow}" if lo == hi else f"{_deg(lo)}°~{_deg(hi)}° (min–max) % {arrow}"


def _teacher(results: Results) -> SummaryRow | None:
    return next((e for e in results.entries("predicted") if e.role == "teacher"), None)


def main_table(results: Results) -> str:
    teacher = _teacher(results)
    rows = []
    for e in results.entries("predicted"):
        cost, lat = results.cost_of(e.model), results.latency_of(e.model)
        acc = _pct(e.bit_acc.mean, 2)
        if e.role == "student" and teacher is not None:
            acc = f"{acc}/{_pct(teacher.bit_acc.mean, 2)}"
        det = e.detection_at(1e-3)
        rows.append([e.model, e.role, cost.get("arch", "—"), _input(cost),
                     _num(cost.get("params") and cost["params"] / 1e6, ".2f"), cost.get("tensors", "—"),
                     _num(cost.get("total_gmacs"), ".2f"), _num(cost.get("gflops"), ".2f"),
                     _num(cost.get("input_gmacs"), ".2f"), _num(cost.get("fp32_mib"), ".2f"),
                     f"{_num(lat.get('p50_ms'), '.1f')} / {_num(lat.get('p95_ms'), '.1f')}",
                     acc, f"{_pct(e.tilt_min)}–{_pct(e.tilt_max)}", _pct(e.word_acc),
                     _pct(det and det.tpr), _iou(e.mask_iou)])
    # @400 compares architectures on the photo's side; @input is what the localizer spends per photo at its own input
    # size, which differs between models (a teacher may read at 160 and its students at 128), flip test included
    headers = ["model", "role", "arch", "input", METRICS["params"].heading, "tensors", "GMACs@400",
               METRICS["gflops"].heading, "GMACs@input", "fp32 MiB", METRICS["latency_ms"].heading,
               f"{METRICS['bit_acc'].heading} (student/teacher)", sweep_heading(results),
               METRICS["word_acc"].heading, METRICS["tpr"].heading, METRICS["mask_iou"].heading]
    table = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    left_out = results.left_out()
    if left_out:  # figures of another checkpoint never sit beside this one's accuracy
        table += "\n\nCost and latency shown only where they measured the evaluated checkpoint:\n" + "\n".join(left_out)
    return table


def _input(cost: dict) -> str:
    side = cost.get("input_size", "—")
    return f"{side} + flip" if cost.get("flip_test") else str(side)


def tilt_table(results: Results) -> str:
    entries = results.entries("predicted") + ([results.oracle()] if results.oracle() else [])
    tilts = sorted({float(t) for e in entries for t in e.per_tilt})
    rows = [[e.model + (" (GT mask ROI)" if e.model == ORACLE else "")]
            + [_pct(e.per_tilt.get(f"{t:g}")) for t in tilts] for e in entries]
    return tabulate(rows, headers=["model"] + [f"{_deg(t, sign=True)}°" for t in tilts], tablefmt="github",
                    disable_numparse=True)


def ablation_table(results: Results) -> str:
    oracle = {e.model: e for e in results.summary.results if e.roi_source == "oracle"}
    rows, partial = [], None
    for e in results.entries("predicted"):
        o = oracle.get(e.model) or results.oracle()
        # the oracle exists only for photos with a ground-truth mask: a gap over other photos would mean nothing
        same_photos = o is not None and o.n_watermarked == e.n_watermarked
        if o is not None and not same_photos:
            partial = (o, e)
        gap = o.bit_acc.mean - e.bit_acc.mean if same_photos and None not in (o.bit_acc.mean, e.bit_acc.mean) else None
        rows.append([e.model, _pct(e.bit_acc.mean, 2), NA if o is None else _pct(o.bit_acc.mean, 2),
                     NA if gap is None else _pct(gap, 2), _pct(e.blind_bit_acc, 2), _pct(e.roi_empty_rate, 2),
                     _iou(e.mask_iou)])
    headers = ["model", f"predicted ROI {METRICS['bit_acc'].heading}", f"oracle ROI {METRICS['bit_acc'].heading}",
               METRICS["localizer_loss"].heading,
               METRICS["blind_bit_acc"].heading, METRICS["roi_empty_rate"].heading, METRICS["mask_iou"].heading]
    table = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    if partial is not None:
        o, e = partial
        table += (f"\n\nThe oracle ROI exists only for photos with a ground-truth mask: it read {o.n_watermarked} "
                  f"watermarked rows ({o.n_photos} photos), the models {e.n_watermarked}, so the localizer loss is "
                  f"{NA}.")
    elif not oracle:
        table += f"\n\nNo photo has a ground-truth mask (or the run skipped the oracle): oracle ROI and loss are {NA}."
    return table


def key_results(results: Results) -> str:
    """The teacher, then the best student per architecture (the seed's 重点结果筛选); a teacher is never one of the
    best students, whatever it reads."""
    best: dict[str, SummaryRow] = {}
    for e in results.entries("predicted"):
        if e.role != "student" or e.bit_acc.mean is None:
            continue
        arch = results.cost_of(e.model).get("arch", e.model)
        if arch not in best or e.bit_acc.mean > best[arch].bit_acc.mean:
            best[arch] = e
    teacher = _teacher(results)
    chosen = ([teacher] if teacher else []) + [best[a] for a in sorted(best)]
    rows = [[e.model, e.role, _pct(e.bit_acc.mean, 2) + f" ± {_pct(e.bit_acc.ci95, 2)}",
             f"{_pct(e.tilt_min)}–{_pct(e.tilt_max)}", *_against_teacher(e, teacher)] for e in chosen]
    headers = ["model", "role", f"{METRICS['bit_acc'].heading} (95 % CI)", sweep_heading(results),
               f"{METRICS['vs_teacher'].heading}, mean", f"{METRICS['vs_teacher'].heading}, worst tilt"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _against_teacher(entry: SummaryRow, teacher: SummaryRow | None) -> list[str]:
    """Student − teacher in points, signed (positive: the student reads higher, a gain), on average and at the tilt
    where the student does worst against the teacher. Only tilts both were measured at count."""
    if teacher is None or entry is teacher or None in (entry.bit_acc.mean, teacher.bit_acc.mean):
        return ["—", "—"]
    mean_diff = _signed(entry.bit_acc.mean - teacher.bit_acc.mean)
    diffs = {t: entry.per_tilt[t] - teacher.per_tilt[t] for t in teacher.per_tilt
             if t in entry.per_tilt and None not in (entry.per_tilt[t], teacher.per_tilt[t])}
    if not diffs:
        return [mean_diff, "—"]
    worst = min(diffs, key=lambda t: (diffs[t], float(t)))  # ties: the lowest tilt, so the text never flips
    return [mean_diff, f"{_signed(diffs[worst])} at {float(worst):+g}°"]


def _signed(x: float) -> str:
    text = f"{100 * x:+.2f}"
    return "+0.00" if text == "-0.00" else text


def field_cost_table(results: Results) -> str:
    rows = [[name.split(":", 1)[1], f"{c['params']:,}", c["tensors"], f"{c['conv_gmacs']:.2f}",
             f"{c['total_gmacs']:.2f}", f"{c['gflops']:.2f}", f"{c['fp32_mib']:.2f}"]
            for name, c in sorted(results.cost.items()) if name.startswith("field:")]
    headers = ["field model (num_classes=1)", "params", "tensors", "conv GMACs", "total GMACs", "GFLOPs (2×MACs)",
               "fp32 MiB"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def provenance_block(results: Results) -> str:
    p = results.summary.provenance
    lines = [f"- results: `{results.folder.as_posix()}` (mode `{p.mode}`, BatchNorm mode "
             f"`{p.bn_mode}`, tilts {p.config['tilts']}, search angles {p.config['angles']})",
             f"- git commit: `{p.git_commit}`; evaluated {p.date}",
             f"- versions: {', '.join(f'{k} {v}' for k, v in sorted(p.versions.items()))}",
             f"- device: {p.device}; torch threads: {p.torch_threads}",
             f"- dataset sha256: `{p.dataset_hash}`"]
    lines += [f"- checkpoint `{name}`: `{sha or 'none (built-in weights)'}`"
              for name, sha in sorted(p.checkpoints.items())]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------- plots


def plot_tilts(results: Results, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8.4, 4.0), dpi=100)
    for e in results.entries("predicted") + ([results.oracle()] if results.oracle() else []):
        tilts = [t for t in sorted(e.per_tilt, key=float) if e.per_tilt[t] is not None]
        ax.plot([float(t) for t in tilts], [100 * e.per_tilt[t] for t in tilts], marker="o",
                linestyle="--" if e.model == ORACLE else "-", label=e.model)
    ax.set(xlabel="camera tilt (°)", ylabel="bit accuracy (%)", title="decoder2 bit accuracy against tilt")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never over a curve
    _save(fig, path)


def plot_cost(results: Results, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for e in results.entries("predicted"):
        cost = results.cost_of(e.model)
        if cost and e.bit_acc.mean is not None:
            ax.scatter(cost["gflops"], 100 * e.bit_acc.mean)
            ax.annotate(e.model, (cost["gflops"], 100 * e.bit_acc.mean), fontsize=8)
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
        f"to 400×400, searched at {'/'.join(_deg(a, sign=True) for a in results.summary.provenance.angles)}°, the "
        "angle with the lowest BCE against the true secret kept, bits = p ≥ 0.5; a sample whose ROI was empty counts "
        "as 0 %.",
        "## Main table\n\n" + main_table(results),
        "## Bit accuracy per tilt (%)\n\n" + tilt_table(results),
        f"![bit accuracy against tilt]({plots['tilt']})",
        "## Localizer or decoder? Predicted ROI against the ground-truth-mask ROI\n\n" + ablation_table(results),
        "## Key results (the teacher, then the best student per architecture)\n\n" + key_results(results),
        f"![accuracy against cost]({plots['cost']})",
    ]
    if any(name.startswith("field:") for name in results.cost):
        sections.append("## The field's models at 400×400\n\n" + field_cost_table(results))
    sections.append("## Provenance\n\n" + provenance_block(results))
    return "\n\n".join(sections) + "\n"


def default_out(results_dir: Path) -> Path:
    """Where a report of `results_dir` goes unless told: beside the results, never over the project's reports/."""
    return results_dir / "report"


def write_report(results_dir: Path, out: Path | None = None) -> Path:
    """REPORT.md and plots/ into the folder `out` (default `<results_dir>/report`); an `out` ending in .md names the
    markdown file itself, the plots going beside it. Returns the markdown's path."""
    results = load_results(results_dir)
    out = default_out(results_dir) if out is None else out
    path = out if out.suffix == ".md" else out / "REPORT.md"
    plots = {"tilt": "plots/bit_acc_vs_tilt.png", "cost": "plots/bit_acc_vs_gflops.png"}
    plot_tilts(results, path.parent / plots["tilt"])
    plot_cost(results, path.parent / plots["cost"])
    text = render(results, plots)
    for run_dir, run in [(results_dir, results), *companion_runs(results_dir)]:
        for section in _run_sections(run_dir, run, results, path.parent):
            marker = "\n\n## Provenance\n"
            text = text.replace(marker, f"\n\n{section}{marker}", 1) if marker in text else f"{text}\n{section}\n"
    path.write_text(text)
    return path


# runs beside the tilt sweep that a results folder may hold, each in a subfolder (an evaluation's folder, or the suites'
# full-mode folder): the main job's camera-conditions run and its deployment run, on fewer photos than the sweep
COMPANIONS = ("conditions", "deploy/full")


def companion_runs(results_dir: Path) -> list[tuple[Path, Results]]:
    found = [results_dir / name for name in COMPANIONS]
    return [(run, load_results(run)) for run in found
            if (run / "summary.json").is_file() or (run / "robustness" / "summary.json").is_file()]


def _run_sections(run_dir: Path, run: Results, main: Results, report_dir: Path) -> list[str]:
    """The camera-conditions and deployment sections of one run (none for a plain tilt sweep); a companion run's
    sections end with the line that says which photos and settings they rest on."""
    sections = [conditions_section(run_dir, report_dir, run.summary.provenance.config),
                deployment_section(run.summary, summary_path(run_dir).parent, report_dir,
                                   lambda model: run.latency_of(model) or main.latency_of(model))]
    source = "" if run is main else f"\n\n{_source_line(run_dir, run)}"
    return [f"{s}{source}" for s in sections if s]


def _source_line(run_dir: Path, run: Results) -> str:
    p = run.summary.provenance
    rows = run.summary.rows()
    photos = max((r.n_photos for r in rows), default=0)
    return (f"*From the run in `{run_dir.as_posix()}`: {photos} photos (dataset sha256 `{p.dataset_hash[:12]}`), "
            f"BatchNorm `{p.bn_mode}`, git `{p.git_commit}`, evaluated {p.date}.*")
