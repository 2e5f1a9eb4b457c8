"""The typed results contract: a model's summary row, the provenance of a run, and the one "counts 0" rule.

`summary.json` is `{"results": [SummaryRow...], "provenance": Provenance, "timing": {...}}`. Every reader (the
report, the gate, the paired comparison, the evaluator's own printout) goes through these types, never through
string keys: `SummaryRow.from_dict` / `Provenance.from_dict` check every key and type and name the file and the key
that is wrong (`ResultsFormatError`), and `to_dict` gives back the same keys in the same order, so a summary read and
written again is byte-identical.

The rule every figure follows (`counted_bit_acc`): a row that read no bits (status `roi_empty` or `failed`) counts as
0 bit accuracy, never silently dropped. The summary, the gate, the paired comparison and the trainer's validation
all call it.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


class ResultsFormatError(ValueError):
    """A summary.json (or one of its entries) does not have the expected keys or types; the message names both."""


# --------------------------------------------------------------------------------------------- the counts-0 rule


def counted_bit_acc(status, bit_acc):
    """THE rule: a row without bits (status roi_empty or failed) counts as 0 bit accuracy.

    `status` and `bit_acc` are one row's (a str and a float or None → a float) or columns (pandas Series → Series);
    the same rule applies to any per-row score that exists only when bits were read (word_ok, blind_bit_acc,
    bits_correct).
    """
    if isinstance(status, pd.Series):
        values = pd.Series(bit_acc, index=status.index, dtype=float)
        return values.where(status == "ok", 0.0).fillna(0.0)
    if status != "ok" or bit_acc is None:
        return 0.0
    value = float(bit_acc)
    return 0.0 if math.isnan(value) else value


# -------------------------------------------------------------------------------------------------- checking


class JsonReader:
    """Typed access to one JSON object, every fault named by file and key path (ResultsFormatError)."""

    def __init__(self, doc: Any, where: str, source: str):
        self.where, self.source = where, source
        if not isinstance(doc, dict):
            self.fail(f"expected an object, got {_kind(doc)}")
        self.doc = doc

    def fail(self, message: str, key: str | None = None):
        path = self.where if key is None else f"{self.where}.{key}" if self.where else key
        raise ResultsFormatError(f"{self.source}: {path or 'top level'}: {message}")

    def raw(self, key: str) -> Any:
        if key not in self.doc:
            self.fail("missing", key)
        return self.doc[key]

    def str(self, key: str) -> str:
        value = self.raw(key)
        if not isinstance(value, str):
            self.fail(f"expected text, got {_kind(value)}", key)
        return value

    def opt_str(self, key: str) -> str | None:
        return None if self.raw(key) is None else self.str(key)

    def int(self, key: str) -> int:
        value = self.raw(key)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(f"expected a whole number, got {_kind(value)}", key)
        return value

    def num(self, key: str) -> float | int:
        value = self.raw(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(f"expected a number, got {_kind(value)}", key)
        return value

    def opt_num(self, key: str) -> float | int | None:
        return None if self.raw(key) is None else self.num(key)

    def obj(self, key: str) -> JsonReader:
        return JsonReader(self.raw(key), f"{self.where}.{key}" if self.where else key, self.source)

    def list(self, key: str) -> list:
        value = self.raw(key)
        if not isinstance(value, list):
            self.fail(f"expected a list, got {_kind(value)}", key)
        return value

    def items(self, key: str) -> list[JsonReader]:
        prefix = f"{self.where}.{key}" if self.where else key
        return [JsonReader(v, f"{prefix}[{i}]", self.source) for i, v in enumerate(self.list(key))]


def _kind(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"[:80]


# ----------------------------------------------------------------------------------------------- summary row


@dataclass(frozen=True)
class BitAcc:
    mean: float | None  # None: no watermarked row
    ci95: float | None  # half-width of the 95 % Student-t interval; None below 2 rows


@dataclass(frozen=True)
class Detection:
    fpr: float  # the target false-positive rate
    threshold_bits: int  # the exact binomial threshold k (bits correct)
    tpr: float | None  # watermarked rows with ≥ k bits right
    empirical_fpr: float | None  # clean rows with ≥ k bits of the reference secret right
    n_clean: int


@dataclass(frozen=True)
class Failure:
    sample_id: str
    tilt_deg: float
    reason: str


@dataclass(frozen=True)
class SummaryRow:
    """The figures of one (model, roi_source): fractions in [0, 1], None where there is nothing to measure (no
    watermarked row, no ground-truth mask for an IoU). See `harness.run.summary` for each figure's definition."""

    model: str
    role: str  # "teacher", "student" or "oracle"
    roi_source: str  # "predicted" or "oracle"
    n_rows: int
    n_watermarked: int  # the rows bit accuracy is over (the gate's record count)
    n_clean: int
    n_photos: int  # for the oracle: the photos with a ground-truth mask
    bit_acc: BitAcc
    bit_acc_ok: float | None
    per_tilt: dict[str, float | None]  # tilt as "%g" text → mean bit accuracy
    tilt_min: float | None
    tilt_max: float | None
    word_acc: float | None
    blind_bit_acc: float | None
    detection: tuple[Detection, ...]
    mask_iou: float | None  # None: no ground-truth mask to compare with
    roi_empty_rate: float | None
    failed: int
    failures: tuple[Failure, ...] = field(default_factory=tuple)

    def detection_at(self, fpr: float) -> Detection | None:
        return next((d for d in self.detection if d.fpr == fpr), None)

    def to_dict(self) -> dict:
        """The summary.json entry, keys in their fixed order."""
        return {
            "model": self.model, "role": self.role, "roi_source": self.roi_source, "n_rows": self.n_rows,
            "n_watermarked": self.n_watermarked, "n_clean": self.n_clean, "n_photos": self.n_photos,
            "bit_acc": {"mean": self.bit_acc.mean, "ci95": self.bit_acc.ci95}, "bit_acc_ok": self.bit_acc_ok,
            "per_tilt": dict(self.per_tilt), "tilt_min": self.tilt_min, "tilt_max": self.tilt_max,
            "word_acc": self.word_acc, "blind_bit_acc": self.blind_bit_acc,
            "detection": [{"fpr": d.fpr, "threshold_bits": d.threshold_bits, "tpr": d.tpr,
                           "empirical_fpr": d.empirical_fpr, "n_clean": d.n_clean} for d in self.detection],
            "mask_iou": self.mask_iou, "roi_empty_rate": self.roi_empty_rate, "failed": self.failed,
            "failures": [{"sample_id": f.sample_id, "tilt_deg": f.tilt_deg, "reason": f.reason}
                         for f in self.failures],
        }

    @classmethod
    def from_dict(cls, doc: Any, source: str = "summary", where: str = "") -> SummaryRow:
        r = JsonReader(doc, where, source)
        acc = r.obj("bit_acc")
        per_tilt = r.obj("per_tilt")
        return cls(
            model=r.str("model"), role=r.str("role"), roi_source=r.str("roi_source"), n_rows=r.int("n_rows"),
            n_watermarked=r.int("n_watermarked"), n_clean=r.int("n_clean"), n_photos=r.int("n_photos"),
            bit_acc=BitAcc(acc.opt_num("mean"), acc.opt_num("ci95")), bit_acc_ok=r.opt_num("bit_acc_ok"),
            per_tilt={k: per_tilt.opt_num(k) for k in per_tilt.doc}, tilt_min=r.opt_num("tilt_min"),
            tilt_max=r.opt_num("tilt_max"), word_acc=r.opt_num("word_acc"), blind_bit_acc=r.opt_num("blind_bit_acc"),
            detection=tuple(Detection(d.num("fpr"), d.int("threshold_bits"), d.opt_num("tpr"),
                                      d.opt_num("empirical_fpr"), d.int("n_clean")) for d in r.items("detection")),
            mask_iou=r.opt_num("mask_iou"), roi_empty_rate=r.opt_num("roi_empty_rate"), failed=r.int("failed"),
            failures=tuple(Failure(f.str("sample_id"), f.num("tilt_deg"), f.str("reason"))
                           for f in r.items("failures")),
        )


# ------------------------------------------------------------------------------------------------ provenance


SDECODER_PREFIX = "sdecoder:"  # key of the SDecoder's checkpoint in `checkpoints`


@dataclass(frozen=True)
class Provenance:
    """What a run measured and how: the resolved configuration, the code and machine, the checkpoints' and the
    dataset's sha256. `config` is the EvalConfig as written (kept whole, so summary.json round-trips byte for byte);
    the properties read the parts the report and the gate compare."""

    config: dict
    git_commit: str
    versions: dict[str, str]
    device: str
    torch_threads: int
    checkpoints: dict[str, str | None]  # model label → sha256 of its checkpoint (None: built-in weights)
    dataset_hash: str
    date: str
    model_options: dict = field(default_factory=dict)  # model label → every factory option it was built with
    plugins: list = field(default_factory=list)  # plug-in modules: name, file sha256, package version

    @property
    def mode(self) -> str:
        return self.config["mode"]

    @property
    def bn_mode(self) -> str:
        return self.config["bn_mode"]

    @property
    def tilts(self) -> tuple[float, ...]:
        return tuple(float(t) for t in self.config["tilts"])

    @property
    def angles(self) -> tuple[float, ...]:
        return tuple(float(a) for a in self.config["angles"])

    @property
    def sdecoder(self) -> str:
        """The SDecoder's label (its name, else its architecture)."""
        spec = self.config["sdecoder"]
        return spec.get("name") or spec["arch"]

    @property
    def sdecoder_sha256(self) -> str | None:
        return self.checkpoints.get(SDECODER_PREFIX + self.sdecoder)

    def checkpoint(self, model: str) -> str | None:
        return self.checkpoints.get(model)

    def to_dict(self) -> dict:
        return {"config": self.config, "git_commit": self.git_commit, "versions": dict(self.versions),
                "device": self.device, "torch_threads": self.torch_threads, "checkpoints": dict(self.checkpoints),
                "dataset_hash": self.dataset_hash, "date": self.date, "model_options": self.model_options,
                "plugins": self.plugins}

    @classmethod
    def from_dict(cls, doc: Any, source: str = "summary", where: str = "provenance") -> Provenance:
        r = JsonReader(doc, where, source)
        cfg = r.obj("config")
        cfg.str("mode"), cfg.str("bn_mode")
        for key in ("tilts", "angles"):
            values = cfg.list(key)
            bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float))]
            if bad or not values:
                cfg.fail(f"expected a non-empty list of numbers, got {values!r}"[:120], key)
        sdec = cfg.obj("sdecoder")
        sdec.str("arch")
        if not isinstance(sdec.doc.get("name", ""), str):
            sdec.fail(f"expected text, got {_kind(sdec.doc['name'])}", "name")
        versions = r.obj("versions")
        checkpoints = r.obj("checkpoints")
        return cls(config=cfg.doc, git_commit=r.str("git_commit"),
                   versions={k: versions.str(k) for k in versions.doc}, device=r.str("device"),
                   torch_threads=r.int("torch_threads"),
                   checkpoints={k: checkpoints.opt_str(k) for k in checkpoints.doc},
                   dataset_hash=r.str("dataset_hash"), date=r.str("date"),
                   model_options=r.doc.get("model_options", {}), plugins=r.doc.get("plugins", []))


# --------------------------------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class Summary:
    """summary.json: the rows per (model, roi_source), the provenance, and the timings (seconds, kept apart)."""

    results: list[SummaryRow]
    provenance: Provenance
    timing: dict  # per model: seconds in forward passes, ROI steps; wall time of this process

    def rows(self, roi_source: str = "predicted") -> list[SummaryRow]:
        return [r for r in self.results if r.roi_source == roi_source]

    def row(self, model: str, roi_source: str = "predicted") -> SummaryRow | None:
        return next((r for r in self.results if r.model == model and r.roi_source == roi_source), None)

    def to_dict(self) -> dict:
        return {"results": [r.to_dict() for r in self.results], "provenance": self.provenance.to_dict(),
                "timing": self.timing}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, doc: Any, source: str = "summary") -> Summary:
        r = JsonReader(doc, "", source)
        rows = [SummaryRow.from_dict(e.doc, source, e.where) for e in r.items("results")]
        timing = r.raw("timing") if "timing" in r.doc else {}
        if not isinstance(timing, dict):
            r.fail(f"expected an object, got {_kind(timing)}", "timing")
        return cls(rows, Provenance.from_dict(r.raw("provenance"), source), timing)


def read_summary(path: str | Path) -> Summary:
    """A summary.json, checked; ResultsFormatError naming the file (and the key) when it is missing or malformed."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ResultsFormatError(f"{path}: cannot be read ({err.strerror or err})") from err
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise ResultsFormatError(f"{path}: not valid JSON (truncated or corrupt?): {err}") from err
    return Summary.from_dict(doc, str(path))
