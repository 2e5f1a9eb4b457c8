"""Regression gate: `python -m harness.gate --baseline reports/baseline.json --results reports/results/quick`.

Compares, per model, the mean bit accuracy and its minimum over tilts (predicted ROI, GT-BCE selection, a row
without bits counting 0: the summary's own figures, from `harness.run.summary.aggregate`) of one results folder
with the baseline stored for the results' run mode (`quick` for CI, `full` for the benchmark sweep), and exits

    0  every baseline model is within the tolerance (default 0.5 points; a drop exactly at it passes),
    1  a model dropped by more than the tolerance (its mean, its worst tilt or, in a run with camera conditions,
       any condition's worst severity, named in the verdict), a baseline model is missing or has
       fewer records than the baseline (incomplete), or a model is NEW to the baseline (unless --allow-new),
    2  the measurement differs from the baseline's (dataset, SDecoder or its checkpoint, tilts, search angles,
       BatchNorm mode): the figures cannot be compared, the message says what differs; or the baseline or the
       results are missing, truncated or malformed (the file is named).

The baseline stores what was measured and how: per mode the measurement (taken from the results' summary.json
provenance) and per model its checkpoint sha256, record count and figures. A changed localizer checkpoint is what
the gate judges: the table shows the baseline's sha256 beside the new one. `--update` writes the results as the
baseline of their mode, on purpose.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from harness.core.constants import NUM_BITS
from harness.run.profile import aggregate_conditions, read_condition_records
from harness.run.results import JsonReader, Provenance, ResultsFormatError, SummaryRow, read_summary
from harness.run.summary import aggregate, read_records

ROUNDING = 6  # decimals a difference is rounded to before it meets the tolerance: 97.5 vs 98.0 at 0.5 passes
REQUIRED_COLUMNS = ("model", "sample_id", "watermarked", "tilt_deg", "roi_source", "mode", "status", "bit_acc")


class GateInputError(Exception):
    """The baseline or the results cannot be read, or they measure different things: exit code 2."""


@dataclass(frozen=True)
class Measurement:
    """How a run measured: what must be equal for two runs' figures to be compared."""

    mode: str
    dataset_hash: str
    sdecoder: str
    sdecoder_sha256: str | None
    tilts: tuple[float, ...]
    angles: tuple[float, ...]
    bn_mode: str
    conditions: str = ""  # camera conditions beyond the tilt and their severities, as run.json gives them ("": none)

    COMPARED = ("dataset_hash", "sdecoder", "sdecoder_sha256", "tilts", "angles", "bn_mode", "conditions")

    @classmethod
    def from_provenance(cls, p: Provenance) -> Measurement:
        return cls(p.mode, p.dataset_hash, p.sdecoder, p.sdecoder_sha256, p.tilts, p.angles, p.bn_mode,
                   _conditions_text(p.config.get("conditions")))

    def to_dict(self) -> dict:
        doc = {"mode": self.mode, "dataset_hash": self.dataset_hash, "sdecoder": self.sdecoder,
               "sdecoder_sha256": self.sdecoder_sha256, "tilts": list(self.tilts), "angles": list(self.angles),
               "bn_mode": self.bn_mode}
        return doc | ({"conditions": self.conditions} if self.conditions else {})

    @classmethod
    def from_reader(cls, r: JsonReader) -> Measurement:
        def numbers(key: str) -> tuple[float, ...]:
            values = r.list(key)
            if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
                r.fail(f"expected a non-empty list of numbers, got {values!r}"[:120], key)
            return tuple(float(v) for v in values)

        return cls(r.str("mode"), r.str("dataset_hash"), r.str("sdecoder"), r.opt_str("sdecoder_sha256"),
                   numbers("tilts"), numbers("angles"), r.str("bn_mode"),
                   r.str("conditions") if "conditions" in r.doc else "")

    def differences(self, other: Measurement) -> list[str]:
        """What differs from `other` (self: the baseline), one line per field."""
        return [f"{key}: baseline {_show(getattr(self, key))}, results {_show(getattr(other, key))}"
                for key in self.COMPARED if getattr(self, key) != getattr(other, key)]


def _conditions_text(conditions) -> str:
    """A run's conditions as one line: "blur=0,1,2 tilt+jpeg=0:100,3:70" ("" for a tilt-only run)."""
    if not conditions:
        return ""
    return " ".join(f"{name}=" + ",".join(":".join(f"{float(v):g}" for v in s) for s in grid)
                    for name, grid in conditions)


def _show(value) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(f"{v:g}" for v in value) + "]"
    return "none (built-in weights)" if value is None else str(value)


@dataclass(frozen=True)
class ModelScore:
    mean_bit_acc: float  # percent
    min_tilt_bit_acc: float  # percent, the lowest per-tilt mean
    n_records: int  # watermarked predicted-ROI rows the figures are over
    checkpoint_sha256: str | None = None  # the localizer checkpoint measured (None: built-in weights, or unknown)
    # a run with camera conditions: per condition, the mean bit accuracy (percent) at its worst severity
    worst_by_condition: tuple[tuple[str, float], ...] = ()

    @classmethod
    def of(cls, row: SummaryRow, checkpoint: str | None,
           worst_by_condition: tuple[tuple[str, float], ...] = ()) -> ModelScore:
        """The gate's figures of one summary row: its bit accuracy and worst tilt, in points."""
        return cls(round(100.0 * row.bit_acc.mean, 4), round(100.0 * row.tilt_min, 4), row.n_watermarked, checkpoint,
                   worst_by_condition)

    def to_dict(self) -> dict:
        doc = {"checkpoint_sha256": self.checkpoint_sha256, "mean_bit_acc": self.mean_bit_acc,
               "min_tilt_bit_acc": self.min_tilt_bit_acc, "n_records": self.n_records}
        return doc | ({"worst_by_condition": dict(self.worst_by_condition)} if self.worst_by_condition else {})


@dataclass(frozen=True)
class GateResults:
    folder: Path  # the run folder holding records.csv and summary.json
    measurement: Measurement
    scores: dict[str, ModelScore]

    @property
    def mode(self) -> str:
        return self.measurement.mode


@dataclass(frozen=True)
class Baseline:
    measurement: Measurement | None  # None: a baseline written before measurements were stored
    scores: dict[str, ModelScore]


# ------------------------------------------------------------------------------------------------------ results


def read_results(results: Path) -> GateResults:
    """The figures of the one run under `results` (an eval run folder, or a suites folder holding robustness/)."""
    files = sorted(results.rglob("records.csv")) if results.is_dir() else []
    if not files:
        raise GateInputError(f"no results: no records.csv under {results}")
    if len(files) > 1:
        raise GateInputError(f"results under {results} hold {len(files)} runs ({', '.join(map(str, files))}); "
                             "point --results at one run")
    path = files[0]
    summary_json = path.parent / "summary.json"
    if not summary_json.is_file():
        raise GateInputError(f"{summary_json} is missing: the run that wrote {path} did not finish")
    try:
        summary = read_summary(summary_json)
    except ResultsFormatError as err:
        raise GateInputError(f"corrupt results: {err}") from err
    rows = _aggregate(path)
    _check_agree(rows, summary.results, path, summary_json)
    p = summary.provenance
    worst = _worst_by_condition(path)
    scores = {r.model: ModelScore.of(r, p.checkpoint(r.model), worst.get(r.model, ())) for r in rows
              if r.roi_source == "predicted" and r.n_watermarked > 0}
    return GateResults(path.parent, Measurement.from_provenance(p), scores)


def _aggregate(path: Path) -> list[SummaryRow]:
    """records.csv → the summary's rows, by the summary's own function; a truncated or malformed file is named."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise GateInputError(f"{path}: cannot be read ({exc})") from exc
    table = list(csv.reader(io.StringIO(text)))
    if not text.endswith("\n") or not table or any(len(row) != len(table[0]) for row in table[1:]):
        raise GateInputError(f"corrupt results file {path}: truncated (a row with missing fields, or no final "
                             "newline)")
    missing = [c for c in REQUIRED_COLUMNS if c not in table[0]]
    if missing:
        raise GateInputError(f"corrupt results file {path}: lacks columns {missing}")
    try:
        records = read_records(text)
        rows = aggregate(records, NUM_BITS)
    except Exception as exc:  # noqa: BLE001  (any parse failure is the same user-facing fault)
        raise GateInputError(f"corrupt results file {path}: {type(exc).__name__}: {exc}") from exc
    return rows


def _worst_by_condition(path: Path) -> dict[str, tuple[tuple[str, float], ...]]:
    """Per model (predicted ROI), per condition, the mean bit accuracy at its worst severity in points; {} for a
    tilt-only run (its records have no condition column)."""
    text = path.read_text()
    if "condition" not in text.partition("\n")[0].split(","):
        return {}
    out: dict[str, list[tuple[str, float]]] = {}
    for w in aggregate_conditions(read_condition_records(text), NUM_BITS).worst:
        if w.roi_source == "predicted" and w.worst_bit_acc is not None:
            out.setdefault(w.model, []).append((w.condition, round(100.0 * w.worst_bit_acc, 4)))
    return {model: tuple(sorted(items)) for model, items in out.items()}


def _check_agree(rows: list[SummaryRow], summary_rows: list[SummaryRow], records: Path, summary: Path) -> None:
    """records.csv and summary.json of one run must tell the same figures (a stale or truncated file does not)."""
    in_summary = {(r.model, r.roi_source): r for r in summary_rows}
    for row in rows:
        other = in_summary.get((row.model, row.roi_source))
        if other is None or (other.n_rows, other.bit_acc.mean) != (row.n_rows, row.bit_acc.mean):
            told = "nothing" if other is None else f"{other.n_rows} rows, bit accuracy {other.bit_acc.mean}"
            raise GateInputError(f"{records} and {summary} disagree on {row.model} ({row.roi_source}): records "
                                 f"{row.n_rows} rows, bit accuracy {row.bit_acc.mean}; summary {told}")


# ----------------------------------------------------------------------------------------------------- baseline


def read_baseline(path: Path, mode: str) -> Baseline:
    if not path.is_file():
        raise GateInputError(f"baseline not found: {path} (create it with --update)")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GateInputError(f"corrupt baseline {path}: not valid JSON (truncated?): {exc}") from exc
    try:
        modes = JsonReader(doc, "", str(path)).obj("modes")
        if mode not in modes.doc:
            raise GateInputError(f"baseline {path} has no entry for mode {mode!r} (it has: "
                                 f"{', '.join(sorted(modes.doc)) or 'none'}); create it with --update")
        entry = modes.obj(mode)
        models = entry.obj("models")
        scores = {}
        for name in models.doc:
            m = models.obj(name)
            worst = m.obj("worst_by_condition") if "worst_by_condition" in m.doc else None
            scores[name] = ModelScore(m.num("mean_bit_acc"), m.num("min_tilt_bit_acc"), m.int("n_records"),
                                      m.opt_str("checkpoint_sha256") if "checkpoint_sha256" in m.doc else None,
                                      tuple(sorted((c, worst.num(c)) for c in worst.doc)) if worst else ())
        measurement = Measurement.from_reader(entry.obj("measurement")) if "measurement" in entry.doc else None
    except ResultsFormatError as exc:
        raise GateInputError(f"corrupt baseline {exc}") from exc
    if measurement is not None and measurement.mode != mode:
        raise GateInputError(f"corrupt baseline {path}: modes.{mode}.measurement.mode is {measurement.mode!r}")
    return Baseline(measurement, scores)


def write_baseline(path: Path, results: GateResults) -> None:
    """The results as the baseline of their mode; the other modes' entries are kept."""
    doc = {"modes": {}}
    if path.is_file():
        try:
            doc = json.loads(path.read_text())
            doc["modes"].keys()
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise GateInputError(f"corrupt baseline {path}: cannot update it ({exc!r}); fix or delete it") from exc
    doc["modes"][results.mode] = {"measurement": results.measurement.to_dict(),
                                  "models": {name: s.to_dict() for name, s in sorted(results.scores.items())}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------------------------ compare


def _within(delta: float, tolerance: float) -> bool:
    """A drop no larger than the tolerance, compared after rounding (float noise never fails a drop at it)."""
    return round(delta, ROUNDING) >= -round(tolerance, ROUNDING)


def _checkpoint(base: str | None, cur: str | None, known: bool) -> str:
    if not known:
        return f"— → {_short(cur)}"
    return f"same {_short(cur)}" if base == cur else f"{_short(base)} → {_short(cur)}"


def _short(sha: str | None) -> str:
    return "built-in" if sha is None else sha[:12]


def compare(baseline: Baseline | dict[str, ModelScore], current: dict[str, ModelScore], tolerance: float,
            allow_new: bool = False) -> tuple[list, bool]:
    """Rows of the delta table, and whether the results pass (every baseline model within the tolerance, complete,
    and no new model unless allowed)."""
    scores = baseline.scores if isinstance(baseline, Baseline) else baseline
    known = not isinstance(baseline, Baseline) or baseline.measurement is not None
    rows, ok = [], True
    for name, base in sorted(scores.items()):
        cur = current.get(name)
        if cur is None:
            rows.append([name, f"{_short(base.checkpoint_sha256) if known else '—'} → —",
                         f"{base.n_records}/—", base.mean_bit_acc, None, None, base.min_tilt_bit_acc, None, None,
                         "MISSING"])
            ok = False
            continue
        d_mean = cur.mean_bit_acc - base.mean_bit_acc
        d_min = cur.min_tilt_bit_acc - base.min_tilt_bit_acc
        dropped = condition_drops(base, cur, tolerance)
        if cur.n_records < base.n_records:
            verdict = "INCOMPLETE"
        elif _within(d_mean, tolerance) and _within(d_min, tolerance) and not dropped:
            verdict = "ok"
        else:
            verdict = "REGRESSED" + (f" at {', '.join(dropped)}" if dropped else "")
        ok &= verdict == "ok"
        rows.append([name, _checkpoint(base.checkpoint_sha256, cur.checkpoint_sha256, known),
                     f"{base.n_records}/{cur.n_records}", base.mean_bit_acc, cur.mean_bit_acc, d_mean,
                     base.min_tilt_bit_acc, cur.min_tilt_bit_acc, d_min, verdict])
    for name, cur in sorted(current.items()):
        if name not in scores:
            rows.append([name, f"— → {_short(cur.checkpoint_sha256)}", f"—/{cur.n_records}", None,
                         cur.mean_bit_acc, None, None, cur.min_tilt_bit_acc, None,
                         "new (allowed)" if allow_new else "NEW"])
            ok &= allow_new
    return rows, ok


def condition_drops(base: ModelScore, cur: ModelScore, tolerance: float) -> list[str]:
    """The conditions whose worst-severity accuracy dropped beyond the tolerance, or that the results lack, each
    named with its change ("blur −1.20", "jpeg missing")."""
    current = dict(cur.worst_by_condition)
    out = []
    for condition, value in base.worst_by_condition:
        if condition not in current:
            out.append(f"{condition} missing")
        elif not _within(current[condition] - value, tolerance):
            out.append(f"{condition} {current[condition] - value:+.2f}")
    return out


def condition_rows(baseline: Baseline, current: dict[str, ModelScore]) -> list[list]:
    """One row per (model, condition) of the baseline: worst-severity accuracy in the baseline, now, and Δ."""
    rows = []
    for name, base in sorted(baseline.scores.items()):
        now = dict(current[name].worst_by_condition) if name in current else {}
        for condition, value in base.worst_by_condition:
            cur = now.get(condition)
            rows.append([name, condition, value, cur, None if cur is None else cur - value])
    return rows


CONDITION_HEADERS = ["model", "condition", "base worst-severity %", "worst-severity %", "Δ"]

HEADERS = ["model", "checkpoint sha256 (baseline → results)", "records (baseline/results)", "base mean %",
           "mean %", "Δ mean", "base min-tilt %", "min-tilt %", "Δ min", "verdict"]
