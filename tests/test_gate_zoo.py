"""The gate on real evaluations: a deliberately degraded student (perturbed weights) fails it, the shipped one
passes. Two reference scenes at one tilt keep it fast."""
from __future__ import annotations

import torch

from harness.data.reference import ReferenceSetConfig, reference_set
from harness.gate import main as gate_main
from harness.models import list_cards
from harness.run import EvalConfig, ModelSpec, evaluate


def _student_card():
    cards = [c for c in list_cards("students") if c.role == "student"]
    assert cards, "the shipped zoo has no student card"
    return sorted(cards, key=lambda c: c.name)[0]


def _evaluate(card, ckpt, data, out):
    spec = ModelSpec(arch=card.arch, ckpt=str(ckpt), input_size=card.input_size, role="student", name=card.name)
    cfg = EvalConfig(localizers=(spec,), sdecoder=ModelSpec("reference_sdecoder"), data=str(data), tilts=(0.0,),
                     bn_mode="eval", oracle=False, mode="quick")
    evaluate(cfg, out, progress=False)


def test_gate_fails_on_a_degraded_student_and_passes_on_the_shipped_one(tmp_path):
    card = _student_card()
    data = reference_set(ReferenceSetConfig(n_marked=2, n_clean=0, seed=1000), tmp_path / "data")
    _evaluate(card, card.checkpoint_path, data, tmp_path / "shipped" / "robustness")
    baseline = tmp_path / "baseline.json"
    assert gate_main(["--baseline", str(baseline), "--results", str(tmp_path / "shipped"), "--update"]) == 0
    assert gate_main(["--baseline", str(baseline), "--results", str(tmp_path / "shipped")]) == 0

    state = torch.load(card.checkpoint_path, weights_only=True)
    generator = torch.Generator().manual_seed(0)
    # Noise on every conv kernel at three times its own spread: the network still runs, its masks are wrong.
    degraded = {k: v.float() + 3.0 * v.float().std() * torch.randn(v.shape, generator=generator)
                if v.ndim == 4 else v for k, v in state.items()}
    torch.save(degraded, tmp_path / "degraded.pt")
    _evaluate(card, tmp_path / "degraded.pt", data, tmp_path / "degraded" / "robustness")
    assert gate_main(["--baseline", str(baseline), "--results", str(tmp_path / "degraded")]) == 1
