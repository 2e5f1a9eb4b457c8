"""Cost: params, state_dict tensors, conv and total GMACs, GFLOPs (= 2 × GMACs) and fp32 MiB at 400×400,
for the models under test and for the field's models (the seed's table: HRNet-W48 teacher and its students).
A model under test's GMACs at its input size count every forward it makes per photo (two with the flip test)."""
from __future__ import annotations

from dataclasses import asdict

import pytest
from suite_results import write_result

from harness.models import sha256_file
from harness.models.cost import model_cost
from harness.models.registry import create_model

FIELD_MODELS = ("hrnet_w48", "hrnet_w18", "pidnet_m", "lite_hrnet_18")
HW = (400, 400)
_costs: dict[str, dict] = {}


def _record(settings, name: str, doc: dict) -> None:
    _costs[name] = doc
    write_result(settings, "cost.json", {"input_hw": list(HW), "models": _costs})


@pytest.mark.parametrize("arch", FIELD_MODELS)
def test_field_model_cost(arch, settings):
    cost = model_cost(create_model(arch, num_classes=1), HW)
    assert cost.gflops == pytest.approx(2 * cost.total_gmacs)
    assert cost.conv_gmacs <= cost.total_gmacs
    _record(settings, f"field:{arch}", {"arch": arch, "role": "field", **asdict(cost)})


def test_zoo_cost(localizer_specs, settings):
    for spec in localizer_specs:
        bare = spec.build().backbone
        at_400 = model_cost(bare, HW)
        side = spec.input_size or HW[0]
        at_input = model_cost(bare, (side, side)) if side != HW[0] else at_400
        assert at_400.params == sum(p.numel() for p in bare.parameters())
        assert at_input.total_gmacs <= at_400.total_gmacs + 1e-9
        forwards = 2 if spec.flip_test else 1
        _record(settings, spec.label, {"arch": spec.arch, "role": spec.role, **asdict(at_400), "input_size": side,
                                       "flip_test": spec.flip_test, "input_gmacs": forwards * at_input.total_gmacs,
                                       # the report joins these figures to accuracy only for the same checkpoint
                                       "checkpoint_sha256": sha256_file(spec.ckpt) if spec.ckpt else None})
