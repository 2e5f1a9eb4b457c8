"""The training loop: run directory, resume equality, student.pt, recipe errors, schedule, data plan, DDP."""
from __future__ import annotations

import json

import pytest
import torch

from harness.distill.checkpoint import read_student
from harness.distill.config import RecipeError, load_recipe, recipe_from_dict, with_seed
from harness.distill.data import StepBatchSampler, TrainSamples, make_loader
from harness.distill.trainer import default_train_scenes, lr_factor, train
from tests.distill_world import BUILDERS, WIDTHS, TinyNet, save_teacher, tiny_recipe, tiny_scenes


def _run(recipe, out, **kw):
    return train(recipe, out, builders=BUILDERS, progress=False, **kw)


def test_run_directory_and_strict_student_load(tmp_path):
    state = _run(tiny_recipe(max_steps=4), tmp_path / "run")
    run = tmp_path / "run"
    assert state.step == 4 and state.best_step in (2, 4)
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["name"] == "tiny_student" and config["optim"]["grad_clip"] == 5.0  # defaults resolved
    events = [json.loads(line)["event"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert events[0] == "start" and events.count("train") == 4 and events.count("val") == 2 and events[-1] == "end"
    weights, saved_config = read_student(run / "student.pt")
    assert json.loads(json.dumps(saved_config)) == config  # the best checkpoint carries its recipe
    assert all(v.dtype == torch.float32 for v in weights.values() if v.is_floating_point())
    TinyNet(WIDTHS["tiny_student"]).load_state_dict(weights, strict=True)
    last = torch.load(run / "last.pt", weights_only=True)
    assert {"student", "connectors", "optimizer", "scheduler", "scaler", "rng", "step", "config",
            "teacher_sha256"} <= set(last)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    ckpt = save_teacher(str(tmp_path / "teacher.pt"))
    recipe = tiny_recipe(max_steps=4, teacher_ckpt=ckpt, loss={"decode_weight": 0.5},
                         distiller=_with_connector())
    _run(recipe, tmp_path / "straight")
    _run(recipe, tmp_path / "broken", until_step=1)
    assert torch.load(tmp_path / "broken" / "last.pt", weights_only=True)["step"] == 1
    _run(recipe, tmp_path / "broken", resume=True)
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "broken" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    for part in ("student", "connectors"):
        assert a[part].keys() == b[part].keys() and len(a[part]) > 0
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=0)
    assert a["teacher_sha256"] == b["teacher_sha256"] != ""
    steps = [json.loads(line).get("step") for line in (tmp_path / "broken" / "log.jsonl").read_text().splitlines()
             if '"train"' in line]
    assert steps == [1, 2, 3, 4]  # no step logged twice


def _with_connector() -> dict:
    from tests.distill_world import SEED_DISTILLER

    cfg = json.loads(json.dumps(SEED_DISTILLER))
    cfg["student_recorders"]["stem"] = {"type": "ModuleOutputs", "source": "backbone.stem.2"}
    cfg["teacher_recorders"]["stem"] = {"type": "ModuleOutputs", "source": "backbone.stem.2"}
    cfg["connectors"] = {"stem_s": {"type": "ConvBNConnector", "in_channel": 4, "out_channel": 6}}
    cfg["distill_losses"]["loss_cwd"] = {"type": "ChannelWiseDivergence", "tau": 2.0, "loss_weight": 1.0}
    cfg["loss_forward_mappings"]["loss_cwd"] = {"preds_S": {"from_student": True, "recorder": "stem",
                                                            "connector": "stem_s"},
                                                "preds_T": {"from_student": False, "recorder": "stem"}}
    return cfg


def test_resume_refuses_a_changed_recipe(tmp_path):
    _run(tiny_recipe(max_steps=2), tmp_path / "run", until_step=1)
    with pytest.raises(RecipeError, match=r"optim\.lr"):
        _run(tiny_recipe(max_steps=2, optim={"lr": 0.5}), tmp_path / "run", resume=True)


def test_resume_reads_a_run_saved_before_a_recipe_field_existed(tmp_path):
    """A field added since the run was saved is absent from its config: the run used the field's default."""
    run = tmp_path / "run"
    _run(tiny_recipe(max_steps=2), run, until_step=1)
    last = torch.load(run / "last.pt", weights_only=True)
    del last["config"]["data"]["synth_in_place"]
    torch.save(last, run / "last.pt")
    assert _run(tiny_recipe(max_steps=2), run, resume=True).step == 2
    with pytest.raises(RecipeError, match=r"data\.synth_in_place"):  # but a non-default value is a change
        _run(tiny_recipe(max_steps=3, data={"synth_in_place": 0.2}), run, resume=True)


def test_a_seed_override_is_recorded_and_changes_the_run(tmp_path):
    base = tiny_recipe(max_steps=2)
    _run(base, tmp_path / "s0")
    _run(with_seed(base, 1), tmp_path / "s1")
    assert json.loads((tmp_path / "s1" / "config.json").read_text())["run"]["seed"] == 1
    a, _ = read_student(tmp_path / "s0" / "student.pt")
    b, _ = read_student(tmp_path / "s1" / "student.pt")
    assert any(not torch.equal(a[key], b[key]) for key in a)
    with pytest.raises(RecipeError, match=r"run\.seed"):  # a resume under another seed would mix two runs
        _run(with_seed(base, 2), tmp_path / "s1", resume=True)


def test_early_stopping_on_the_declared_metric(tmp_path):
    state = _run(tiny_recipe(max_steps=40, run={"val_every": 1, "early_stop_patience": 2},
                             optim={"lr": 0.0}, schedule={"warmup_steps": 0}), tmp_path / "run")
    assert state.stopped_early and state.step == 3 and state.best_step == 1  # lr 0: nothing ever improves


@pytest.mark.parametrize("table, match", [
    ({"optim": {"name": "adam"}}, r"optim\.name: 'adam' is not one of"),
    ({"optim": {"lrr": 0.1}}, r"optim\.lrr: unknown key"),
    ({"run": {"max_steps": "10"}}, r"run\.max_steps: expected int"),
    ({"data": {"synth_same_source": 1.5}}, r"data\.synth_same_source: 1\.5 is not a share in \[0, 1\]"),
    ({"trainer": {}}, r"unknown table \[trainer\]"),
    ({"distiller": {"type": "ConfigurableDistiller"}}, r"\[distiller\] needs a \[teacher\]"),
    ({"data": {"hflip": True}, "loss": {"decode_weight": 0.3}}, r"r\.toml: data\.hflip mirrors the watermark"),
])
def test_recipe_errors_name_the_key(table, match):
    with pytest.raises(RecipeError, match=match):
        recipe_from_dict(table, "r.toml")


def test_synth_scenes_take_the_recipes_share_of_same_source_scenes():
    data = recipe_from_dict({"data": {"source": "synth", "synth_seed": 3, "synth_same_source": 0.4}}).data
    assert default_train_scenes(data).cfg.same_source == 0.4
    assert default_train_scenes(recipe_from_dict({"data": {"source": "synth"}}).data).cfg.same_source == 0.0
    data = recipe_from_dict({"data": {"source": "synth", "synth_in_place": 0.25}}).data
    assert default_train_scenes(data).cfg.in_place == 0.25


def test_recipe_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[run]\nmax_steps = = 3\n")
    with pytest.raises(RecipeError, match="bad.toml: not valid TOML"):
        load_recipe(bad)


def test_warmup_then_cosine_and_poly():
    recipe = tiny_recipe(max_steps=100, schedule={"warmup_steps": 10, "warmup_ratio": 0.1})
    assert lr_factor(0, recipe) == pytest.approx(0.1) and lr_factor(10, recipe) == pytest.approx(1.0)
    assert lr_factor(55, recipe) == pytest.approx(0.5) and lr_factor(100, recipe) == pytest.approx(0.0)
    poly = tiny_recipe(max_steps=100, schedule={"name": "poly", "warmup_steps": 0, "power": 1.0})
    assert lr_factor(50, poly) == pytest.approx(0.5)


def test_batches_depend_on_seed_and_step_only():
    scenes = tiny_scenes(5, 0, 32)
    samples = TrainSamples(scenes, 32)
    plan = StepBatchSampler(5, 2, seed=1, start_step=0, max_steps=4, tilt_deg=5.0, hflip=False)
    later = StepBatchSampler(5, 2, seed=1, start_step=2, max_steps=4, tilt_deg=5.0, hflip=False)
    assert [d.index for d in plan.draws(0)] + [d.index for d in plan.draws(1)] + [d.index for d in plan.draws(2)][:1] \
        == list(plan._order(0)) and abs(plan.draws(3)[0].tilt_deg) <= 5.0
    serial = [b["image"] for b in make_loader(samples, plan, 0)][2:]
    parallel = [b["image"] for b in make_loader(samples, later, 2)]
    for a, b in zip(serial, parallel, strict=True):
        torch.testing.assert_close(a, b)
    ranks = [StepBatchSampler(5, 1, 1, 0, 4, 5.0, False, rank=r, world_size=2).draws(3) for r in (0, 1)]
    assert ranks[0] + ranks[1] == plan.draws(3)


def test_tilt_augmentation_turns_photo_and_mask_together():
    samples = TrainSamples(tiny_scenes(1, 0, 64), 64)
    from harness.distill.data import Draw

    flat, tilted = samples[Draw(0, 0.0, False)], samples[Draw(0, 5.0, False)]
    assert not torch.equal(flat["mask"], tilted["mask"])
    bright = tilted["image"].mean(0, keepdim=True) > 0.55
    agree = (bright == (tilted["mask"] > 0.5)).float().mean()
    assert agree > 0.97


def test_resume_refuses_another_world_size_and_a_finished_run_stays_finished(tmp_path):
    run = tmp_path / "run"
    _run(tiny_recipe(max_steps=2), run)
    before = (run / "last.pt").read_bytes()
    assert _run(tiny_recipe(max_steps=2), run, resume=True).step == 2
    assert (run / "last.pt").read_bytes() == before  # nothing retrained or rewritten
    last = torch.load(run / "last.pt", weights_only=True)
    last["world_size"] = 2
    torch.save(last, run / "last.pt")
    with pytest.raises(RecipeError, match=r"saved by 2 process\(es\), resumed by 1"):
        _run(tiny_recipe(max_steps=2), run, resume=True)
