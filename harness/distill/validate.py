"""Validation during training: the project's batched decoder2 evaluator on a small validation set.

The set is a dataset folder: `[validation] root`, or, when that is empty, a synthetic set generated once into the
run directory (`val_set/`, `python -m harness.data synth` semantics, cached). Its photos are prepared once per run
(fitted, rotated by each search angle with the EDT fill: `harness.pipeline.views.prepare`) and kept in memory, so a
validation costs only the forward passes. Scenes carry their own camera tilt, so validation runs at tilt 0.

Per model: `bit_acc` is the mean over watermarked photos of the bit accuracy at the angle with the lowest BCE, a
photo whose ROI is empty at every angle (or that failed) counting 0, as the project's summaries do; `iou` is the mean
mask IoU at the chosen angle; `roi_empty_rate` the share of photos without ROI.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from harness.core import metrics
from harness.core.constants import SEARCH_ANGLES
from harness.pipeline.batched import BatchedEvaluator, Decode, NamedLocalizer
from harness.pipeline.views import ViewSpec, prepare
from harness.run.results import counted_bit_acc


def _score(decodes: list[Decode], secrets: list[np.ndarray]) -> dict[str, float]:
    accs, ious, empty = [], [], 0
    for decode, secret in zip(decodes, secrets):
        if decode.status == "ok":
            accs.append(metrics.count_correct(secret, metrics.bits_from_probs(decode.probs)) / len(secret))
        else:
            accs.append(counted_bit_acc(decode.status, None))  # the project's one "counts 0" rule
            empty += decode.status == "roi_empty"
        if decode.iou is not None:
            ious.append(decode.iou)
    return {"bit_acc": float(np.mean(accs)) if accs else float("nan"),
            "iou": float(np.mean(ious)) if ious else float("nan"),
            "roi_empty_rate": empty / len(decodes) if decodes else float("nan")}


class Validator:
    """The watermarked photos of a dataset folder, prepared once; `evaluate` runs the batched decoder2 on them."""

    def __init__(self, root: str | Path, sdecoder: nn.Module, angles: tuple[float, ...] = SEARCH_ANGLES,
                 bn_mode: str = "eval", batch_size: int = 8, device: torch.device | str = "cpu"):
        from harness.data import load_dataset

        samples = [s for s in load_dataset(root).samples if s.watermarked]
        if not samples:
            raise ValueError(f"validation set {root}: no watermarked photo to measure bit accuracy on")
        spec = ViewSpec(tilts=(0.0,), angles=tuple(angles))
        self.photos = [prepare(sample, i, spec) for i, sample in enumerate(samples)]
        self.secrets = [np.asarray(sample.secret, np.uint8) for sample in samples]
        self.sdecoder, self.angles, self.bn_mode = sdecoder, tuple(angles), bn_mode
        self.batch_size, self.device = batch_size, device

    def __len__(self) -> int:
        return len(self.photos)

    @torch.no_grad()
    def evaluate(self, models: list[NamedLocalizer]) -> dict[str, dict[str, float]]:
        evaluator = BatchedEvaluator(models,
                                     self.sdecoder, self.angles, self.bn_mode, self.batch_size, oracle=False,
                                     device=self.device)
        results = evaluator.decode(self.photos, self.secrets)
        return {m.name: _score([rows[0] for rows in results[m.name]], self.secrets) for m in models}


def synth_validation_set(out_dir: Path, size: int, seed: int, key: int, tilt_range: float) -> Path:
    """A random-secret synthetic set with background, generated into `out_dir` once (reused when it matches)."""
    from harness.data.synth import SynthConfig, generate

    return generate(SynthConfig(kind="random", background=True, n=size, seed=seed, tilt_range=tilt_range, key=key),
                    out_dir)
