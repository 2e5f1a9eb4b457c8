"""Shipping a run into the zoo: fp16 weights that load back strictly, and a card that describes the run."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from harness.distill.export import export_run
from harness.models import LineageStep, load_card, sha256_file
from harness.models.registry import create_model


def _fake_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    config = {"model": {"name": "hrnet_w18_small_v1", "input_size": 64, "init_ckpt": "runs/phase1/student.pt"},
              "data": {"batch_size": 8, "source": "folder", "root": "data/train", "synth_seed": 0, "tilt_deg": 5.0},
              "run": {"seed": 3}, "teacher": None}
    (run / "config.json").write_text(json.dumps(config))
    log = [{"event": "start", "step": 0, "time": 0.0, "world_size": 2},
           {"event": "train", "step": 10, "sec_per_step": 1.5, "time": 15.0},
           {"event": "train", "step": 20, "sec_per_step": 1.5, "time": 30.0},
           {"event": "val", "step": 20, "student_bit_acc": 0.93, "val_iou": 0.81, "time": 31.0}]
    (run / "log.jsonl").write_text("\n".join(json.dumps(e) for e in log) + "\n")
    torch.manual_seed(0)
    net = create_model("hrnet_w18_small_v1")
    torch.save(net.state_dict(), run / "student.pt")
    return run, net


def test_export_writes_fp16_weights_and_a_card_that_builds(tmp_path):
    run, net = _fake_run(tmp_path)
    out = export_run(run, "w18s", "student", tmp_path / "recipe.toml", root=tmp_path / "students")
    weights = torch.load(out / "weights.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in weights.values() if v.is_floating_point())
    card = load_card(out / "card.toml")
    assert (card.arch, card.role, card.input_size, card.checkpoint) == ("hrnet_w18_small_v1", "student", 64,
                                                                        "weights.pt")
    assert card.training["steps"] == 20 and card.training["seed"] == 3
    assert card.training["processes"] == 2 and card.training["init_ckpt"] == "runs/phase1/student.pt"
    assert card.training["validation"]["student_bit_acc"] == 0.93
    built = card.build()  # checks the sha256 and loads strictly
    expected = net.state_dict()["last_layer.3.weight"].half().float()
    torch.testing.assert_close(built.backbone.state_dict()["last_layer.3.weight"], expected)
    assert not built.flip_test


def test_export_flip_test_is_written_into_the_card(tmp_path):
    run, _ = _fake_run(tmp_path)
    out = export_run(run, "t", "teacher", tmp_path / "recipe.toml", root=tmp_path / "students", flip_test=True)
    card = load_card(out / "card.toml")
    assert card.flip_test and card.build().flip_test and card.input_size == 64


def test_card_names_where_the_training_scenes_came_from(tmp_path, monkeypatch):
    """A generator folder is described by its own record; scenes made on the fly by the generator's seed."""
    from harness.data.synth import SynthConfig, generate

    monkeypatch.chdir(tmp_path)
    generate(SynthConfig(kind="random", n=2, seed=7), tmp_path / "data" / "train")
    run, _ = _fake_run(tmp_path)
    card = load_card(export_run(run, "w18s", "student", tmp_path / "r.toml", root=tmp_path / "a") / "card.toml")
    assert card.training["data"] == "folder:data/train (2 scenes, generator seed 7, tilt augmentation ±5.0°)"

    config = json.loads((run / "config.json").read_text())
    config["data"].update(source="synth", synth_size=100000, synth_seed=4)
    (run / "config.json").write_text(json.dumps(config))
    card = load_card(export_run(run, "w18s", "student", tmp_path / "r.toml", root=tmp_path / "b") / "card.toml")
    assert card.training["data"] == "synth: 100000 scenes made on the fly (generator seed 4, tilt augmentation ±5.0°)"

    config["data"].update(synth_same_source=0.4)
    (run / "config.json").write_text(json.dumps(config))
    card = load_card(export_run(run, "w18s", "student", tmp_path / "r.toml", root=tmp_path / "c") / "card.toml")
    assert card.training["data"] == ("synth: 100000 scenes made on the fly (generator seed 4, 40% of backgrounds cut "
                                     "from the label's own source image, tilt augmentation ±5.0°)")


def test_card_of_a_mined_set_names_its_source_and_the_mining(tmp_path, monkeypatch):
    import pandas as pd

    from harness.data.hard import HardSetConfig, hard_set
    from harness.data.synth import SynthConfig, generate

    monkeypatch.chdir(tmp_path)
    pool = generate(SynthConfig(kind="random", n=2, seed=7, same_source=0.5), tmp_path / "data" / "pool")
    records = pd.DataFrame([{"model": "t", "roi_source": "predicted", "watermarked": 1, "sample_id": "img_00001",
                             "iou": 0.3}])
    hard_set(pool, records, HardSetConfig(model="t", repeat=3), tmp_path / "data" / "train")
    run, _ = _fake_run(tmp_path)
    card = load_card(export_run(run, "w18s", "student", tmp_path / "r.toml", root=tmp_path / "a") / "card.toml")
    assert card.training["data"] == ("folder:data/train (2 scenes, generator seed 7, 50% same-source; the 1 whose "
                                     "mean mask IoU under t was below 0.85 repeated 3 more times; tilt augmentation "
                                     "±5.0°)")


def test_card_lineage_ends_with_this_run(tmp_path):
    run, _ = _fake_run(tmp_path)
    card = load_card(export_run(run, "w18s", "student", Path("recipes/ft.toml"), root=tmp_path / "a") / "card.toml")
    assert card.lineage == (LineageStep("recipes/ft.toml", "runs/phase1/student.pt"),)  # a file it cannot see

    config = json.loads((run / "config.json").read_text())
    config["model"]["init_ckpt"] = ""
    (run / "config.json").write_text(json.dumps(config))
    card = load_card(export_run(run, "w18s", "student", Path("recipes/kd.toml"), root=tmp_path / "b") / "card.toml")
    assert card.lineage == (LineageStep("recipes/kd.toml", "scratch"),)


def test_card_lineage_continues_the_card_of_the_initial_checkpoint(tmp_path):
    run, _ = _fake_run(tmp_path)
    first = export_run(run, "w18s", "student", Path("recipes/kd.toml"), root=tmp_path / "zoo")
    digest = sha256_file(first / "weights.pt")
    config = json.loads((run / "config.json").read_text())
    config["model"]["init_ckpt"] = str(first / "weights.pt")
    (run / "config.json").write_text(json.dumps(config))
    # in place: the run started from the weights this export replaces, so their card is read before they are
    card = load_card(export_run(run, "w18s", "student", Path("recipes/ft.toml"), root=tmp_path / "zoo") / "card.toml")
    assert [step.recipe for step in card.lineage] == ["recipes/kd.toml", "recipes/ft.toml"]
    assert card.lineage[1].init == f"w18s weights, sha256 {digest[:12]}"


def test_lineage_from_names_the_earlier_runs(tmp_path):
    from harness.distill.__main__ import main

    run, _ = _fake_run(tmp_path)
    earlier = tmp_path / "earlier.toml"
    earlier.write_text('name = "e"\narch = "hrnet_w18_small_v1"\nrole = "student"\nrecipe = "recipes/b.toml"\n'
                       '[[lineage]]\nrecipe = "recipes/a.toml"\ninit = "scratch"\n'
                       '[[lineage]]\nrecipe = "recipes/b.toml"\ninit = "e phase-1 weights, git 0123abc"\n')
    assert main(["export", str(run), "--name", "w18s", "--role", "student", "--recipe", "recipes/c.toml",
                 "--root", str(tmp_path / "zoo"), "--lineage-from", str(earlier)]) == 0
    card = load_card(tmp_path / "zoo" / "w18s" / "card.toml")
    assert [step.recipe for step in card.lineage] == ["recipes/a.toml", "recipes/b.toml", "recipes/c.toml"]
    assert card.lineage[-1].init == "runs/phase1/student.pt"

    # a card written before lineages existed stands for its own run
    earlier.write_text('name = "e"\narch = "hrnet_w18_small_v1"\nrole = "student"\nrecipe = "recipes/b.toml"\n'
                       '[training]\ninit_ckpt = ""\n')
    out = export_run(run, "w18s", "student", Path("recipes/c.toml"), root=tmp_path / "zoo2", lineage_from=earlier)
    assert load_card(out / "card.toml").lineage[0] == LineageStep("recipes/b.toml", "scratch")
