"""The distiller: MMRazor schema checks naming the bad key, the frozen teacher, the dry run, the shipped recipes."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch

from harness.distill.config import load_recipe
from harness.distill.connectors import ConnectorError
from harness.distill.distiller import ConfigurableDistiller, DistillerConfigError, SingleTeacherDistill
from harness.distill.recorders import RecorderError
from harness.distill.trainer import Builders, Trainer
from tests.distill_world import (
    BUILDERS,
    SEED_DISTILLER,
    save_teacher,
    tiny_localizer,
    tiny_recipe,
    train_scenes,
    val_set,
)

RECIPES = Path(__file__).resolve().parents[1] / "students" / "recipes"
SEED_RECIPE = Path(__file__).resolve().parent / "fixtures" / "recipes" / "student_hrnet_w18_small_l2.toml"


def _broken(path: str, value=None, delete: bool = False) -> dict:
    """SEED_DISTILLER with the entry at dotted `path` replaced (or deleted)."""
    cfg = copy.deepcopy(SEED_DISTILLER)
    *parents, last = path.split(".")
    node = cfg
    for key in parents:
        node = node[key]
    if delete:
        del node[last]
    else:
        node[last] = value
    return cfg


@pytest.mark.parametrize("path, value, delete, match", [
    ("loss_forward_mappings.loss_l2.t_feature", None, True, r"loss_forward_mappings\.loss_l2\.t_feature: missing"),
    ("loss_forward_mappings.loss_l2.preds_T", {"from_student": False, "recorder": "logits"}, False,
     r"loss_forward_mappings\.loss_l2\.preds_T: L2Loss\.forward has no argument"),
    ("loss_forward_mappings.loss_l2.s_feature.recorder", "logit", False,
     r"loss_forward_mappings\.loss_l2\.s_feature\.recorder: no student recorder 'logit'"),
    ("loss_forward_mappings.loss_l2.s_feature.connector", "adapt", False,
     r"loss_forward_mappings\.loss_l2\.s_feature\.connector: no connector 'adapt'"),
    ("loss_forward_mappings.loss_l2.s_feature.from_student", None, True,
     r"loss_forward_mappings\.loss_l2\.s_feature\.from_student: required"),
    ("loss_forward_mappings.loss_l2.s_feature.recoder", "logits", False,
     r"loss_forward_mappings\.loss_l2\.s_feature\.recoder: unknown key"),
    ("loss_forward_mappings.loss_kd", {}, False, r"loss_forward_mappings\.loss_kd: no loss 'loss_kd'"),
    ("distill_losses.loss_l2.type", "L3Loss", False, r"distill_losses\.loss_l2\.type: unknown loss 'L3Loss'"),
    ("distill_losses.loss_l2.temperature", 2.0, False, r"distill_losses\.loss_l2\.temperature: L2Loss takes no"),
    ("distill_losses.loss_cwd", {"type": "ChannelWiseDivergence", "tau": 1.0}, False,
     r"loss_forward_mappings\.loss_cwd: missing"),
    ("distill_deliveries", {"d": {"type": "MethodOutputs"}}, False, r"distiller\.distill_deliveries"),
    ("type", "OFDDistiller", False, r"distiller\.type"),
    ("student_recorders.logits.source", None, True, r"student_recorders\.logits\.source"),
])
def test_config_errors_name_the_bad_key(path, value, delete, match):
    with pytest.raises((DistillerConfigError, RecorderError, ValueError), match=match):
        ConfigurableDistiller.from_config(_broken(path, value, delete))


def test_unknown_top_level_key_and_bad_connector_are_named():
    with pytest.raises(DistillerConfigError, match=r"distiller\.student_recorder: unknown key"):
        ConfigurableDistiller.from_config({**SEED_DISTILLER, "student_recorder": {}})
    with pytest.raises(ConnectorError, match=r"connectors\.adapt\.type: unknown connector"):
        ConfigurableDistiller.from_config({**SEED_DISTILLER, "connectors": {"adapt": {"type": "Conv"}}})


def test_tutorial_style_mapping_with_connector_and_from_recorder():
    cfg = copy.deepcopy(SEED_DISTILLER)
    cfg["student_recorders"]["stem"] = {"type": "ModuleOutputs", "source": "backbone.stem.2"}
    cfg["teacher_recorders"]["stem"] = {"type": "ModuleOutputs", "source": "backbone.stem.2"}
    cfg["connectors"] = {"stem_s": {"type": "ConvBNConnector", "in_channel": 4, "out_channel": 6}}
    cfg["distill_losses"]["loss_cwd"] = {"type": "ChannelWiseDivergence", "tau": 1.0, "loss_weight": 5.0}
    cfg["loss_forward_mappings"]["loss_cwd"] = {
        "preds_S": {"from_student": True, "from_recorder": "stem", "connector": "stem_s"},
        "preds_T": {"from_student": False, "recorder": "stem"}}
    teacher = tiny_localizer("tiny_teacher", 32, None)
    algorithm = SingleTeacherDistill(tiny_localizer("tiny_student", 32, None), teacher, cfg)
    _, losses = algorithm.forward_train(torch.rand(2, 3, 32, 32))
    assert set(losses) == {"loss_l2", "loss_cwd"} and all(float(v.detach()) > 0 for v in losses.values())
    losses["loss_cwd"].backward()
    assert algorithm.distiller.connectors["stem_s"].conv.weight.grad is not None
    algorithm.close()


def test_teacher_is_frozen_for_good():
    algorithm = SingleTeacherDistill(tiny_localizer("tiny_student", 32, None), tiny_localizer("tiny_teacher", 32, None),
                                     SEED_DISTILLER)
    algorithm.train()
    assert not algorithm.teacher.training and not any(m.training for m in algorithm.teacher.modules())
    assert algorithm.student.training
    assert not any(p.requires_grad for p in algorithm.teacher.parameters())
    algorithm.close()


def test_dry_run_refuses_a_loss_that_stays_zero_for_different_models():
    cfg = _broken("loss_forward_mappings.loss_l2.t_feature", {"from_student": True, "recorder": "logits"})
    algorithm = SingleTeacherDistill(tiny_localizer("tiny_student", 32, None), tiny_localizer("tiny_teacher", 32, None),
                                     cfg)
    with pytest.raises(DistillerConfigError, match=r"distill_losses\.loss_l2: dry run gave 0"):
        algorithm.dry_run(torch.rand(2, 3, 32, 32))
    algorithm.close()


def test_dry_run_leaves_the_student_unchanged_and_accepts_a_student_started_from_the_teacher():
    student = tiny_localizer("tiny_teacher", 32, None)
    teacher = copy.deepcopy(student)
    before = copy.deepcopy(student.state_dict())
    algorithm = SingleTeacherDistill(student, teacher, SEED_DISTILLER)
    values = algorithm.dry_run(torch.rand(2, 3, 32, 32))  # student in training mode, teacher in eval mode
    assert torch.isfinite(torch.tensor(values["loss_l2"]))
    assert student.training
    for key, value in student.state_dict().items():
        torch.testing.assert_close(value, before[key])
    algorithm.close()


def test_teacher_weights_and_bn_statistics_unchanged_by_training(tmp_path):
    recipe = tiny_recipe(max_steps=3, teacher_ckpt=save_teacher(str(tmp_path / "teacher.pt")))
    trainer = Trainer(recipe, tmp_path / "run", BUILDERS, progress=False)
    teacher = trainer.algorithm.teacher.module
    before = copy.deepcopy(teacher.state_dict())
    student_before = copy.deepcopy(trainer.student.state_dict())
    trainer.run()
    trainer.close()
    for key, value in teacher.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    changed = [k for k, v in trainer.student.state_dict().items() if not torch.equal(v, student_before[k])]
    assert any("running_mean" in k for k in changed) and any(k.endswith("weight") for k in changed)
    assert len(trainer.student.backbone.last_layer[3]._forward_hooks) == 0
    assert len(teacher.backbone.last_layer[3]._forward_hooks) == 0


@pytest.mark.parametrize("path", [*sorted(RECIPES.glob("*.toml")), SEED_RECIPE], ids=lambda p: p.name)
def test_shipped_recipes_load_and_their_distillers_build(path):
    recipe = load_recipe(path)
    assert recipe.model.input_size <= 256 and recipe.data.tilt_deg == 5.0
    if recipe.distiller:
        assert recipe.teacher is not None
        ConfigurableDistiller.from_config(recipe.distiller).close()


def test_seed_style_recipe_records_last_layer_and_runs_a_step(tmp_path):
    """The seed-style L2 recipe (a test fixture) on the real HRNets (tiny inputs, tiny data, one step)."""
    from harness.models import build_localizer

    recipe = load_recipe(SEED_RECIPE)
    torch.manual_seed(0)
    teacher = build_localizer(recipe.teacher.name, 64)
    with torch.no_grad():
        teacher.train()(torch.rand(2, 3, 64, 64))  # BN statistics off their defaults
    ckpt = tmp_path / "teacher.pt"
    torch.save(teacher.backbone.state_dict(), ckpt)
    recipe = dataclasses.replace(
        recipe,
        run=dataclasses.replace(recipe.run, max_steps=1, val_every=0),
        model=dataclasses.replace(recipe.model, input_size=64),
        teacher=dataclasses.replace(recipe.teacher, input_size=64, ckpt=str(ckpt)),
        data=dataclasses.replace(recipe.data, source="synth", synth_size=2, image_size=64, batch_size=2,
                                 num_workers=0),
        validation=dataclasses.replace(recipe.validation, metric="val_iou", size=2),
    )
    state = Trainer(recipe, tmp_path / "run", Builders(train_scenes=train_scenes, val_set=val_set),
                    progress=False)
    try:
        assert [r.source for r in state.algorithm.distiller.student_recorders.recorders.values()] == \
            ["backbone.last_layer.3"]
        result = state.run()
    finally:
        state.close()
    assert result.step == 1
    lines = (tmp_path / "run" / "log.jsonl").read_text()
    assert '"loss_l2"' in lines and '"dry_run"' in lines
