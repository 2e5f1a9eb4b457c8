"""The robustness profile of a run with camera conditions: tables, one plot per condition, a failure gallery.

`conditions_section(results_dir, out_dir)` returns the report's markdown section (None for a tilt-only run, whose
records have no `condition` column) and writes its plots under `out_dir/plots/`:

    profile table   one row per model, one column per condition: the bit accuracy at the model's worst severity of
                    that condition and, for a student, student − teacher at that severity with its paired standard
                    error over photos (the photo is the unit: harness.outputs.paired)
    per condition   per model and severity: bit accuracy ± 95 % CI, word accuracy, TPR at FPR 1e-3, mask IoU, ROI
                    empty rate (harness.run.profile, the figures of conditions.json)
    plots           per condition, bit accuracy against severity, one line per model with its 95 % band
    gallery         per model, a contact sheet of its worst (photo, condition, severity) rows: the view the
                    localizer saw at the chosen search angle, the predicted ROI box (red), the ground-truth box
                    (green) and the bits read

Pure formatting over the records, except the gallery, which prepares the few views it shows again from the dataset
the run's provenance names (skipped with a note when that folder is not there).
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402
from tabulate import tabulate  # noqa: E402

from harness.conditions import parse_severity  # noqa: E402
from harness.core.constants import NUM_BITS, ORACLE  # noqa: E402
from harness.core.metrics import heading  # noqa: E402
from harness.core.roi import box_from_mask  # noqa: E402
from harness.run.profile import ConditionProfile, aggregate_conditions, read_condition_records  # noqa: E402
from harness.run.results import counted_bit_acc  # noqa: E402

GALLERY_SIZE = 8  # worst rows per model on its contact sheet
TILE = 240  # side of one tile of the contact sheet, pixels (the 400×400 view scaled down)
CAPTION = 46  # caption height under a tile, pixels


def records_path(folder: Path) -> Path | None:
    for path in (folder / "records.csv", folder / "robustness" / "records.csv"):
        if path.is_file():
            return path
    return None


def has_conditions(folder: Path) -> bool:
    path = records_path(folder)
    if path is None:
        return False
    with open(path) as handle:
        return "condition" in handle.readline().strip().split(",")


def _pct(x: float | None, digits: int = 1) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def _models(frame: pd.DataFrame) -> list[str]:
    """Predicted-ROI models, teachers first then by name (the oracle last, when present)."""
    roles = frame.drop_duplicates("model").set_index("model")["role"].to_dict()
    names = sorted((m for m in roles if m != ORACLE), key=lambda m: (roles[m] != "teacher", m))
    return names + ([ORACLE] if ORACLE in roles else [])


def _conditions(frame: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(frame["condition"]))  # the run's order (records sort by name)


# --------------------------------------------------------------------------------------------------- tables


def paired_difference(marked: pd.DataFrame, student: str, teacher: str, condition: str,
                      severity: str) -> tuple[float, float, int]:
    """Student − teacher bit accuracy (points) at one condition and severity: the mean over the photos both read,
    its paired standard error, and the number of photos."""
    rows = marked[(marked["condition"] == condition) & (marked["severity"] == severity)]
    acc = rows.assign(acc=100 * counted_bit_acc(rows["status"], rows["bit_acc"]))
    s = acc[acc["model"] == student].groupby("sample_id")["acc"].mean()
    t = acc[acc["model"] == teacher].groupby("sample_id")["acc"].mean()
    d = (s - t).dropna().to_numpy()
    if d.size == 0:
        return math.nan, math.nan, 0
    se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else math.nan
    return float(d.mean()), se, int(d.size)


def profile_table(frame: pd.DataFrame, doc: ConditionProfile) -> str:
    marked = frame[(frame["watermarked"] == 1) & (frame["roi_source"] == "predicted")]
    worst = {(w.model, w.condition): w for w in doc.worst if w.roi_source == "predicted"}
    roles = frame.drop_duplicates("model").set_index("model")["role"].to_dict()
    teacher = next((m for m in _models(frame) if roles.get(m) == "teacher"), None)
    conditions = _conditions(frame)
    rows = []
    for model in [m for m in _models(frame) if m != ORACLE]:
        row = [model]
        for condition in conditions:
            w = worst.get((model, condition))
            if w is None or w.worst_severity is None:
                row.append("—")
                continue
            cell = f"{_pct(w.worst_bit_acc)} @ {w.worst_severity}"
            if teacher is not None and model != teacher:
                d, se, _ = paired_difference(marked, model, teacher, condition, w.worst_severity)
                if not math.isnan(d):
                    cell += f" ({d:+.1f} ± {se:.1f})" if not math.isnan(se) else f" ({d:+.1f})"
            row.append(cell)
        rows.append(row)
    return tabulate(rows, headers=["model", *conditions], tablefmt="github", disable_numparse=True)


def condition_table(doc: ConditionProfile, condition: str) -> str:
    rows = []
    for r in doc.rows:
        if r.condition != condition or r.roi_source != "predicted" and r.model != ORACLE:
            continue
        rows.append([r.model, r.severity, _pct(r.bit_acc.mean, 2), _pct(r.bit_acc.ci95, 2), _pct(r.word_acc),
                     _pct(r.tpr_at(1e-3)), "—" if r.mask_iou is None else f"{r.mask_iou:.3f}",
                     _pct(r.roi_empty_rate), r.n_watermarked])
    headers = ["model", "severity", heading("bit_acc"), "± 95 %", heading("word_acc"), heading("tpr"),
               heading("mask_iou"), heading("roi_empty_rate"), "rows"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


# ---------------------------------------------------------------------------------------------------- plots


def plot_condition(doc: ConditionProfile, condition: str, path: Path) -> None:
    rows = [r for r in doc.rows if r.condition == condition and r.bit_acc.mean is not None
            and (r.roi_source == "predicted" or r.model == ORACLE)]
    severities = sorted({r.severity for r in rows}, key=parse_severity)
    numeric = all(len(parse_severity(s)) == 1 for s in severities)
    x_of = {s: (parse_severity(s)[0] if numeric else i) for i, s in enumerate(severities)}
    fig, ax = plt.subplots(figsize=(7.6, 3.8), dpi=100)
    for model in dict.fromkeys(r.model for r in rows):
        mine = sorted((r for r in rows if r.model == model), key=lambda r: parse_severity(r.severity))
        x = np.array([x_of[r.severity] for r in mine], float)
        y = np.array([100 * r.bit_acc.mean for r in mine])
        half = np.array([100 * (r.bit_acc.ci95 or 0.0) for r in mine])
        line, = ax.plot(x, y, marker="o", linestyle="--" if model == ORACLE else "-", label=model)
        ax.fill_between(x, y - half, y + half, color=line.get_color(), alpha=0.15, linewidth=0)
    if not numeric:
        ax.set_xticks(list(x_of.values()), list(x_of))
    ax.set(xlabel=f"{condition} severity", ylabel="bit accuracy (%)",
           title=f"decoder2 bit accuracy under {condition} (95 % band)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


# -------------------------------------------------------------------------------------------------- gallery


def worst_rows(frame: pd.DataFrame, model: str, n: int = GALLERY_SIZE) -> pd.DataFrame:
    """The model's n watermarked predicted-ROI rows with the lowest bit accuracy (a row without bits counts 0),
    ties by condition, severity and photo so the choice is deterministic."""
    rows = frame[(frame["model"] == model) & (frame["watermarked"] == 1) & (frame["roi_source"] == "predicted")]
    rows = rows.assign(counted=counted_bit_acc(rows["status"], rows["bit_acc"]),
                       order=[parse_severity(s) for s in rows["severity"]])
    return rows.sort_values(["counted", "condition", "order", "sample_id"], kind="mergesort").head(n)


def contact_sheet(rows: pd.DataFrame, config: dict, path: Path) -> bool:
    """Draw the rows' views as the localizer saw them; False when the run's dataset is not there to read."""
    from harness.data import load_dataset  # the data and the views only when a gallery is drawn
    from harness.pipeline.views import ViewSpec, prepare

    try:
        dataset = load_dataset(config["data"])
    except Exception:  # noqa: BLE001  (moved, deleted or unreadable: the report says so and goes on)
        return False
    index = {s.id: i for i, s in enumerate(dataset.samples)}
    angles = tuple(float(a) for a in config["angles"])
    cols = 4
    n_rows = max(1, -(-len(rows) // cols))
    sheet = Image.new("RGB", (cols * TILE, n_rows * (TILE + CAPTION)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for k, r in enumerate(rows.itertuples()):
        i = index.get(str(r.sample_id))
        if i is None:
            continue
        point = (r.condition, parse_severity(r.severity))
        spec = ViewSpec((0.0,), angles, config.get("fill", "black"), points=(point,),
                        exif_transpose=bool(config.get("exif_transpose", False)))
        views = prepare(dataset[i], i, spec)
        if views.pixels is None:
            continue
        a = angles.index(float(r.chosen_angle)) if not pd.isna(r.chosen_angle) else 0
        side = views.pixels.shape[2]
        scale = TILE / side
        tile = Image.fromarray(views.pixels[0, a]).resize((TILE, TILE), Image.BILINEAR)
        tile_draw = ImageDraw.Draw(tile)
        gt = None if views.gt_masks is None else box_from_mask(views.gt_masks[0, a])
        if gt is not None:
            tile_draw.rectangle([v * scale for v in gt], outline=(0, 220, 0), width=2)
        if not pd.isna(r.x0):
            tile_draw.rectangle([r.x0 * scale, r.y0 * scale, r.x1 * scale, r.y1 * scale], outline=(230, 0, 0), width=2)
        x, y = (k % cols) * TILE, (k // cols) * (TILE + CAPTION)
        sheet.paste(tile, (x, y))
        acc = "no ROI" if r.status != "ok" else f"{100 * r.bit_acc:.0f}% bits"
        bits = str(r.bits) if isinstance(r.bits, str) and r.bits else "—"
        draw.text((x + 3, y + TILE + 2), f"{r.sample_id} {r.condition}={r.severity}", fill="black", font=font)
        draw.text((x + 3, y + TILE + 15), f"{acc}, angle {angles[a]:g}", fill="black", font=font)
        draw.text((x + 3, y + TILE + 28), bits[:25], fill=(90, 90, 90), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=False)
    return True


# ---------------------------------------------------------------------------------------------------- section


def conditions_section(results_dir: Path, out_dir: Path, config: dict | None = None,
                       gallery: int = GALLERY_SIZE) -> str | None:
    """The markdown of the camera-conditions section (plots written under out_dir/plots), or None when the run
    holds no condition beyond the tilt. `config`: the run's EvalConfig as its provenance records it (for the
    gallery's dataset, search angles and fill); None: no gallery."""
    path = records_path(results_dir)
    if path is None or not has_conditions(results_dir):
        return None
    text = path.read_text()
    frame = read_condition_records(text)
    doc = aggregate_conditions(frame, NUM_BITS)
    parts = ["## Camera conditions: the robustness profile",
             "Each cell: the bit accuracy (%) at the model's worst severity of the condition (@ that severity) and, "
             "for a student, student − teacher in points at that severity ± its paired standard error over photos. "
             "Severities and their sources: docs/conditions.md.",
             profile_table(frame, doc)]
    for condition in _conditions(frame):
        slug = condition.replace("+", "_")
        plot = f"plots/condition_{slug}.png"
        plot_condition(doc, condition, out_dir / plot)
        parts += [f"### {condition}", condition_table(doc, condition), f"![bit accuracy under {condition}]({plot})"]
    if config is not None and gallery > 0:
        sheets = []
        for model in [m for m in _models(frame) if m != ORACLE]:
            sheet = f"plots/gallery_{model}.png"
            if contact_sheet(worst_rows(frame, model, gallery), config, out_dir / sheet):
                sheets.append(f"**{model}**\n\n![worst photo-conditions of {model}]({sheet})")
        parts.append("### Failure gallery\n\nPer model, its worst photo-conditions as the localizer saw them (the "
                     "chosen search angle): predicted ROI red, ground-truth box green, the bits read (hex) below.")
        parts += sheets or [f"(no gallery: the dataset {config.get('data')} is not readable here)"]
    return "\n\n".join(parts)
