"""Robustness: every model through decoder2 over the tilt sweep, predicted ROI beside the oracle ROI."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from harness.summary import read_records


@pytest.fixture(scope="module")
def records(robustness, settings) -> pd.DataFrame:
    return read_records((settings.out / "robustness" / "records.csv").read_text())


def test_every_model_decodes_every_photo_at_every_tilt(robustness, records, settings):
    cfg, _ = robustness
    n_photos = records["sample_id"].nunique()
    assert n_photos == settings.reference.n_marked + settings.reference.n_clean
    for spec in cfg.localizers:
        rows = records[(records["model"] == spec.label) & (records["roi_source"] == "predicted")]
        assert sorted(rows["tilt_deg"].unique()) == sorted(settings.tilts), spec.label
        assert len(rows) == n_photos * len(settings.tilts), spec.label
        assert (rows["status"] != "failed").all(), rows.loc[rows["status"] == "failed", "reason"].tolist()


def test_oracle_roi_ablation_is_present(records, settings):
    oracle = records[records["roi_source"] == "oracle"]
    marked = oracle[oracle["watermarked"] == 1]
    assert len(marked) == settings.reference.n_marked * len(settings.tilts)
    # The ground-truth box always exists, so the oracle never reports an empty ROI.
    assert (oracle["status"] == "ok").all()


def test_summary_has_figures_and_provenance(robustness, settings):
    cfg, summary = robustness
    labels = {spec.label for spec in cfg.localizers} | {"oracle"}
    assert {entry["model"] for entry in summary.results} == labels
    for entry in summary.results:
        assert 0.0 <= entry["bit_acc"]["mean"] <= 1.0
        assert set(entry["per_tilt"]) == {f"{t:g}" for t in settings.tilts}
        assert entry["tilt_min"] <= entry["bit_acc"]["mean"] + 1e-9 or math.isnan(entry["tilt_min"])
    prov = summary.provenance
    for key in ("git_commit", "versions", "device", "torch_threads", "checkpoints", "dataset_hash"):
        assert key in prov, key
