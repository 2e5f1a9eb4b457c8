"""The reference codec on a few natural labels: quality, robustness, and the SDecoder's contract."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.bench.codec import (
    box_error_roi,
    chain_acc,
    jpeg,
    on_background,
    psnr,
    rotated_in_place,
    scene_roi,
    tilted_scene,
    to_roi,
)
from harness.codec import ReferenceSDecoder, embed
from harness.data.content import label_content
from harness.models.registry import create_model, list_models

N_LABELS = 6


@pytest.fixture(scope="module")
def world():
    """Labels, secrets and watermarked labels; drawn once for the module."""
    rng = np.random.default_rng(123)
    labels = [label_content(rng) for _ in range(N_LABELS)]
    secrets = [rng.integers(0, 2, 100) for _ in range(N_LABELS)]
    marked = [embed(label, bits) for label, bits in zip(labels, secrets)]
    return rng, labels, secrets, marked


@pytest.fixture(scope="module")
def decode():
    torch.set_num_threads(1)
    return torch.no_grad()(ReferenceSDecoder(key=0))


def _acc(decode, image: np.ndarray | torch.Tensor, bits: np.ndarray) -> float:
    roi = to_roi(image) if isinstance(image, np.ndarray) else image
    return float(((decode(roi)[0] > 0).numpy() == bits).mean())


def test_psnr_stays_above_34_db(world):
    _, labels, _, marked = world
    assert min(psnr(m, label) for m, label in zip(marked, labels)) >= 34.0


def test_reads_clean_rotated_compressed_and_misboxed_labels(world, decode):
    rng, _, secrets, marked = world
    clean, rotated, compressed, misboxed = [], [], [], []
    for bits, m in zip(secrets, marked):
        canvas = on_background(rng, m)
        clean.append(_acc(decode, m, bits))
        rotated.append(_acc(decode, rotated_in_place(canvas, 2.0), bits))
        compressed.append(_acc(decode, jpeg(m, 75), bits))
        misboxed.append(_acc(decode, box_error_roi(rng, canvas, 0.03), bits))
    assert np.mean(clean) >= 0.99
    assert np.mean(rotated) >= 0.95
    assert np.mean(compressed) >= 0.93
    assert np.mean(misboxed) >= 0.93


def test_reads_scene_rois_and_the_decoder2_chain(decode):
    """Labels at 45–80 % of a photo, blurred, noisy, JPEG'd; ROI = box of the tilted true mask (corners included)."""
    scenes = [tilted_scene(i, 7, tilt) for i, tilt in enumerate((-2.0, 1.5, 2.0))]
    residual = [_acc(decode, scene_roi(photo, mask, 0.0), bits) for photo, mask, bits in scenes]
    chain = [chain_acc(decode, *tilted_scene(i, 8, tilt)) for i, tilt in enumerate((-4.5, 4.5))]
    assert np.mean(residual) >= 0.95
    assert np.mean(chain) >= 0.95


def test_unmarked_label_and_wrong_key_read_chance(world, decode):
    _, labels, secrets, marked = world
    unmarked = np.mean([_acc(decode, label, bits) for label, bits in zip(labels, secrets)])
    other_key = torch.no_grad()(ReferenceSDecoder(key=1))
    wrong_key = np.mean([_acc(other_key, m, bits) for m, bits in zip(marked[:3], secrets[:3])])
    assert 0.38 <= unmarked <= 0.62
    assert 0.3 <= wrong_key <= 0.7


def test_embed_is_deterministic_and_depends_on_the_bits(world):
    _, labels, secrets, marked = world
    again = embed(labels[0], secrets[0])
    assert np.array_equal(again, marked[0])
    assert not np.array_equal(embed(labels[0], 1 - secrets[0]), marked[0])


def test_decoder_is_deterministic_and_batch_independent(world, decode):
    _, _, _, marked = world
    batch = torch.cat([to_roi(m) for m in marked[:3]])
    together = decode(batch)
    alone = torch.cat([decode(batch[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(decode(batch[:1]), alone[:1], rtol=0, atol=0)


def test_logits_are_calibrated_and_differentiable(world):
    _, _, secrets, marked = world
    roi = to_roi(marked[0]).requires_grad_(True)
    logits = ReferenceSDecoder(key=0)(roi)
    assert logits.shape == (1, 100)
    assert 2.0 <= float(logits.detach().abs().median()) <= 10.0
    target = torch.from_numpy(secrets[0]).float()[None]
    torch.nn.functional.binary_cross_entropy_with_logits(logits, target).backward()
    assert torch.isfinite(roi.grad).all()
    assert float(roi.grad.abs().sum()) > 0


def test_bad_inputs_raise_clear_errors(world):
    _, labels, secrets, _ = world
    decoder = ReferenceSDecoder()
    with pytest.raises(ValueError, match="B×3×400×400"):
        decoder(torch.zeros(1, 3, 200, 200))
    with pytest.raises(ValueError, match="uint8"):
        embed(labels[0].astype(np.float32), secrets[0])
    with pytest.raises(ValueError, match="bits"):
        embed(labels[0], np.zeros(99, dtype=np.int64))


def test_registered_as_sdecoder():
    assert "reference_sdecoder" in list_models("sdecoder")
    model = create_model("reference_sdecoder", key=3)
    assert isinstance(model, ReferenceSDecoder) and model.key == 3
    assert sum(p.numel() for p in model.parameters()) == 0
