"""Robustness: every model through decoder2 over the tilt sweep, predicted ROI beside the oracle ROI."""
from __future__ import annotations

import pandas as pd
import pytest

from harness.run.summary import read_records


@pytest.fixture(scope="module")
def records(robustness, settings) -> pd.DataFrame:
    return read_records((settings.out / "robustness" / "records.csv").read_text())


def test_every_model_decodes_every_photo_at_every_tilt(robustness, records, settings):
    cfg, _ = robustness
    n_photos = records["sample_id"].nunique()
    assert n_photos == settings.reference.n_marked + settings.reference.n_clean
    for spec in cfg.localizers:
        rows = records[(records["model"] == spec.label) & (records["roi_source"] == "predicted")]
        assert sorted(rows["tilt_deg"].unique()) == sorted(cfg.tilts), spec.label  # --condition: those it applies
        assert len(rows) == n_photos * len(cfg.condition_points()), spec.label
        assert (rows["status"] != "failed").all(), rows.loc[rows["status"] == "failed", "reason"].tolist()


def _masked_photos(records: pd.DataFrame) -> set[str]:
    """Photos with a ground-truth mask: the only ones a model's mask gets an IoU on."""
    predicted = records[records["roi_source"] == "predicted"]
    return set(predicted.loc[predicted["iou"].notna(), "sample_id"])


def test_oracle_roi_ablation_is_present(robustness, records, settings):
    oracle = records[records["roi_source"] == "oracle"]
    # an oracle row for every photo with a ground-truth mask, and none (n/a, not 0 %) for a photo without one
    assert set(oracle["sample_id"]) == _masked_photos(records)
    assert len(oracle) == len(_masked_photos(records)) * len(robustness[0].condition_points())
    # The ground-truth box always exists, so the oracle never reports an empty ROI.
    assert (oracle["status"] == "ok").all()


def test_summary_has_figures_and_provenance(robustness, records, settings):
    cfg, summary = robustness
    labels = {spec.label for spec in cfg.localizers} | ({"oracle"} if _masked_photos(records) else set())
    assert {row.model for row in summary.results} == labels
    for row in summary.results:
        assert 0.0 <= row.bit_acc.mean <= 1.0
        assert set(row.per_tilt) == {f"{t:g}" for t in cfg.tilts}
        assert row.tilt_min <= row.bit_acc.mean + 1e-9
    prov = summary.provenance
    assert prov.tilts == cfg.tilts and prov.mode == settings.mode and len(prov.dataset_hash) == 64
    assert {spec.label for spec in cfg.localizers} <= set(prov.checkpoints) and prov.git_commit and prov.device
