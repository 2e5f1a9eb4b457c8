"""The zoo: Localizer wrapper, builders, weights-only checkpoint loading, model cards."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CheckpointError,
    LineageStep,
    Localizer,
    ModelCard,
    build_localizer,
    build_sdecoder,
    list_cards,
    load_card,
    load_checkpoint,
    sha256_file,
)

SMALL = "hrnet_w18_small_v1"




class Spy(nn.Module):
    """A stand-in network: remembers what it was given and returns `outputs(x)`."""

    def __init__(self, outputs=lambda x: x[:, :1]):
        super().__init__()
        self.outputs = outputs
        self.seen: torch.Tensor | None = None

    def forward(self, x):
        self.seen = x
        return self.outputs(x)


# ----------------------------------------------------------------------------------------------- Localizer


def test_localizer_resizes_then_normalises():
    spy = Spy()
    x = torch.rand(2, 3, 50, 70)
    Localizer(spy, input_size=32)(x)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    expected = (F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False) - mean) / std
    torch.testing.assert_close(spy.seen, expected)


def test_localizer_without_input_size_keeps_the_size():
    spy = Spy()
    Localizer(spy)(torch.rand(1, 3, 21, 37))
    assert spy.seen.shape == (1, 3, 21, 37)


def test_localizer_state_dict_is_the_backbone_only():
    loc = build_localizer(SMALL, input_size=64)
    keys = list(loc.state_dict())
    assert keys == ["backbone." + k for k in loc.backbone.state_dict()]
    assert not any(k in ("mean", "std") for k in keys)


def test_wrapped_hrnet_resolves_last_layer_3_and_returns_quarter_logits():
    loc = build_localizer(SMALL, input_size=64).eval()
    final = dict(loc.named_modules())["backbone.last_layer.3"]
    assert isinstance(final, nn.Conv2d) and final.out_channels == 1
    with torch.no_grad():
        out = loc(torch.rand(2, 3, 90, 120))
    assert out.shape == (2, 1, 16, 16)
    assert torch.isfinite(out).all()


def test_localizer_takes_the_main_output_of_a_list():
    main = torch.full((1, 1, 4, 4), 2.0)
    spy = Spy(lambda x: [torch.zeros(1, 1, 4, 4), main, torch.ones(1, 1, 4, 4)])
    assert Localizer(spy)(torch.rand(1, 3, 8, 8)) is main


def test_localizer_rejects_an_unknown_list_output():
    spy = Spy(lambda x: [x[:, :1], x[:, :1]])
    with pytest.raises(ValueError, match="2 outputs"):
        Localizer(spy)(torch.rand(1, 3, 8, 8))


def test_localizer_rejects_more_than_one_channel():
    with pytest.raises(ValueError, match="B×1×h×w"):
        Localizer(Spy(lambda x: x[:, :2]))(torch.rand(1, 3, 8, 8))


@pytest.mark.parametrize("bad", [torch.rand(1, 4, 8, 8), torch.rand(3, 8, 8),
                                 torch.zeros(1, 3, 8, 8, dtype=torch.uint8)])
def test_localizer_rejects_bad_input(bad):
    with pytest.raises(ValueError, match="B×3×H×W"):
        Localizer(Spy())(bad)


def test_flip_test_averages_the_logits_of_the_photo_and_its_mirror_image():
    # a network that sees position: its logits on the mirror image, mirrored back, differ from its own
    loc = Localizer(nn.Conv2d(3, 1, 3, padding=1, bias=False), input_size=12).eval()
    x = torch.rand(2, 3, 20, 30)
    with torch.no_grad():
        plain = loc(x)
        mirrored = loc(x.flip(-1)).flip(-1)
        loc.flip_test = True
        both = loc(x)
    assert not torch.allclose(plain, mirrored)
    torch.testing.assert_close(both, (plain + mirrored) / 2)
    torch.testing.assert_close(loc(x.flip(-1)).flip(-1), both)  # the flip test is mirror-symmetric


def test_flip_test_keeps_the_state_dict_and_the_main_output():
    main = torch.arange(16.0).view(1, 1, 4, 4)
    spy = Spy(lambda x: [torch.zeros(1, 1, 4, 4), main, torch.ones(1, 1, 4, 4)])
    torch.testing.assert_close(Localizer(spy, flip_test=True)(torch.rand(1, 3, 8, 8)), (main + main.flip(-1)) / 2)
    assert list(build_localizer(SMALL, flip_test=True).state_dict()) == list(build_localizer(SMALL).state_dict())


def test_localizer_follows_dtype_and_device_moves():
    loc = Localizer(Spy(), input_size=8).double()
    assert loc(torch.rand(1, 3, 8, 8, dtype=torch.float64)).dtype == torch.float64


# ------------------------------------------------------------------------------------------------- builders


def test_build_localizer_loads_weights(tmp_path):
    source = build_localizer(SMALL)
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)  # wrapped keys: backbone.*
    loaded = build_localizer(SMALL, input_size=400, ckpt=path)
    assert loaded.input_size == 400
    torch.testing.assert_close(loaded.backbone.last_layer[3].weight, source.backbone.last_layer[3].weight)


def test_builders_check_the_kind():
    with pytest.raises(ValueError, match="registered as a localizer, not a sdecoder"):
        build_sdecoder(SMALL)


def test_unknown_name_lists_known_names():
    with pytest.raises(KeyError, match="hrnet_w18"):
        build_localizer("hrnet_w99")


# ---------------------------------------------------------------------------------------------- checkpoints


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 1, 1))


def _randomised(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: torch.randn_like(v) if v.is_floating_point() else v + 3 for k, v in net.state_dict().items()}


def _assert_loaded(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = net.state_dict()
    for k, v in state.items():
        torch.testing.assert_close(loaded[k], v.to(loaded[k].dtype), msg=k)


@pytest.mark.parametrize("wrap", [lambda s: s, lambda s: {"state_dict": s, "epoch": 3},
                                  lambda s: {"model": s, "optimizer": {}}])
def test_load_plain_and_containers(tmp_path, wrap):
    state = _randomised(_net())
    torch.save(wrap(state), tmp_path / "c.pt")
    net = _net()
    assert load_checkpoint(net, tmp_path / "c.pt") is net
    _assert_loaded(net, state)


def test_load_strips_ddp_and_wrapper_prefixes(tmp_path):
    state = _randomised(_net())
    torch.save({"module.backbone." + k: v for k, v in state.items()}, tmp_path / "ddp.pt")
    net = load_checkpoint(_net(), tmp_path / "ddp.pt")
    _assert_loaded(net, state)


def test_prefix_kept_when_it_is_part_of_the_model_keys(tmp_path):
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = _net()

    state = _randomised(Wrapper())
    torch.save(state, tmp_path / "w.pt")
    _assert_loaded(load_checkpoint(Wrapper(), tmp_path / "w.pt"), state)


def test_fp16_checkpoint_is_cast_to_the_model_dtype(tmp_path):
    state = {k: v.half() if v.is_floating_point() else v for k, v in _randomised(_net()).items()}
    torch.save(state, tmp_path / "half.pt")
    net = load_checkpoint(_net(), tmp_path / "half.pt")
    assert all(p.dtype == torch.float32 for p in net.parameters())
    torch.testing.assert_close(net[0].weight, state["0.weight"].float())


def test_mismatch_lists_missing_unexpected_and_misshaped_keys(tmp_path):
    state = _randomised(_net())
    del state["2.bias"]
    state["3.weight"] = torch.zeros(1)
    state["0.weight"] = torch.zeros(4, 3, 5, 5)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(_net(), tmp_path / "bad.pt")
    message = str(err.value)
    assert "bad.pt" in message
    assert "missing keys (1): 2.bias" in message
    assert "unexpected keys (1): 3.weight" in message
    assert "wrongly shaped (1): 0.weight: checkpoint (4, 3, 5, 5) vs model (4, 3, 3, 3)" in message


def test_mismatch_message_is_capped_with_counts(tmp_path):
    torch.save({f"extra.{i}": torch.zeros(1) for i in range(25)} | _randomised(_net()), tmp_path / "many.pt")
    with pytest.raises(CheckpointError, match=r"unexpected keys \(25\): extra\.0, .*\.\.\. and 15 more"):
        load_checkpoint(_net(), tmp_path / "many.pt")


def test_non_strict_allows_missing_keys_but_never_wrong_shapes(tmp_path):
    state = _randomised(_net())
    del state["2.bias"]
    torch.save(state, tmp_path / "partial.pt")
    net = load_checkpoint(_net(), tmp_path / "partial.pt", strict=False)
    torch.testing.assert_close(net[0].weight, state["0.weight"])
    state["0.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="wrongly shaped"):
        load_checkpoint(_net(), tmp_path / "partial.pt", strict=False)


def test_missing_batchnorm_counters_are_tolerated(tmp_path):
    state = {k: v for k, v in _randomised(_net()).items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pt")
    _assert_loaded(load_checkpoint(_net(), tmp_path / "old.pt"), state)


class _Payload:
    """Unpickling this runs code (creates a file): a weights-only load must refuse it."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_pickle_needing_code_execution_is_refused(tmp_path):
    target = tmp_path / "executed"
    torch.save({"0.weight": torch.zeros(1), "payload": _Payload(target)}, tmp_path / "unsafe.pt")
    with pytest.raises(CheckpointError, match=r"refusing checkpoint .*unsafe\.pt.*code execution"):
        load_checkpoint(_net(), tmp_path / "unsafe.pt")
    assert not target.exists()


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_checkpoint(_net(), tmp_path / "nowhere.pt")


def test_foreign_file_is_a_clear_error(tmp_path):
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.pt is not a readable torch file"):
        load_checkpoint(_net(), tmp_path / "notes.pt")


def test_non_tensor_entries_are_named(tmp_path):
    torch.save({"0.weight": torch.zeros(1), "step": 7}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match="not tensors: step"):
        load_checkpoint(_net(), tmp_path / "mixed.pt")


def test_sha256_file(tmp_path):
    (tmp_path / "f.bin").write_bytes(b"abc" * 1000)
    assert sha256_file(tmp_path / "f.bin") == hashlib.sha256(b"abc" * 1000).hexdigest()


# ------------------------------------------------------------------------------------------------ model cards


def _write_card(folder: Path, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "card.toml").write_text(body)
    return folder / "card.toml"


@pytest.fixture
def student(tmp_path) -> tuple[Path, Localizer]:
    source = build_localizer(SMALL)
    weights = {k: v.half() if v.is_floating_point() else v for k, v in source.backbone.state_dict().items()}
    folder = tmp_path / "students" / "tiny"
    folder.mkdir(parents=True)
    torch.save(weights, folder / "weights.pt")  # shipped as fp16, bare (official) keys
    digest = sha256_file(folder / "weights.pt")
    card = _write_card(folder, f'''
name = "tiny"
arch = "{SMALL}"
role = "student"
input_size = 128
checkpoint = "weights.pt"
sha256 = "{digest}"
recipe = "recipes/tiny.toml"
[notes]
teacher = "hrnet_w48"
[training]
epochs = 2
''')
    return card, source


def test_card_loads_and_builds_with_weights(student):
    card_path, source = student
    card = load_card(card_path)
    assert isinstance(card, ModelCard)
    assert (card.name, card.arch, card.role, card.input_size) == ("tiny", SMALL, "student", 128)
    assert card.notes == {"teacher": "hrnet_w48"} and card.training == {"epochs": 2}
    assert card.checkpoint_path == card_path.parent / "weights.pt"
    loc = card.build()
    assert isinstance(loc, Localizer) and loc.input_size == 128
    torch.testing.assert_close(loc.backbone.conv1.weight, source.backbone.conv1.weight.half().float())


def test_list_cards_finds_every_card(student, tmp_path):
    _write_card(tmp_path / "students" / "another", f'name = "another"\narch = "{SMALL}"\nrole = "teacher"\n')
    cards = list_cards(tmp_path / "students")
    assert [c.name for c in cards] == ["another", "tiny"]
    assert cards[0].checkpoint_path is None


def test_card_sha256_mismatch_is_an_error(student):
    card_path, _ = student
    text = card_path.read_text()
    card_path.write_text(text.replace('sha256 = "', 'sha256 = "0'))
    with pytest.raises(CheckpointError, match="sha256"):
        load_card(card_path).build()


@pytest.mark.parametrize("body, fault", [
    ('name = "x"\narch = "a"\nrole = "student"\nepochs = 3\n', "unknown keys \\['epochs'\\]"),
    ('name = "x"\narch = "a"\nrole = "pupil"\n', "role 'pupil'"),
    ('name = "x"\nrole = "student"\n', "'arch' is required"),
    ('name = "x"\narch = "a"\nrole = "student"\ninput_size = -4\n', "input_size"),
    ('name = "x"\narch = "a"\nrole = "student"\nnotes = 3\n', "\\[notes\\] must be a table"),
    ('name = "x"\narch = "a"\nrole = "student"\nflip_test = "yes"\n', "flip_test must be true or false"),
    ('name = "x\n', "invalid TOML"),
    ('name = "x"\narch = "a"\nrole = "student"\nlineage = "kd then ft"\n', "lineage must be an array of tables"),
    ('name = "x"\narch = "a"\nrole = "student"\nlineage = [3]\n', "lineage\\[0\\] must be a table"),
    ('name = "x"\narch = "a"\nrole = "student"\n[[lineage]]\nrecipe = "r.toml"\n', "lineage\\[0\\].init is required"),
    ('name = "x"\narch = "a"\nrole = "student"\n[[lineage]]\nrecipe = 1\ninit = "scratch"\n',
     "lineage\\[0\\].recipe is required"),
    ('name = "x"\narch = "a"\nrole = "student"\n[[lineage]]\nrecipe = "r.toml"\ninit = "scratch"\nsteps = 3\n',
     "lineage\\[0\\]: unknown keys \\['steps'\\]"),
])
def test_bad_cards_name_the_file_and_the_fault(tmp_path, body, fault):
    path = _write_card(tmp_path / "bad", body)
    with pytest.raises(ValueError, match=fault) as err:
        load_card(path)
    assert str(path) in str(err.value)


def test_card_lineage_is_a_tuple_of_steps_oldest_first(tmp_path):
    path = _write_card(tmp_path / "c", 'name = "x"\narch = "a"\nrole = "student"\nrecipe = "b.toml"\n'
                                        '[[lineage]]\nrecipe = "a.toml"\ninit = "scratch"\n'
                                        '[[lineage]]\nrecipe = "b.toml"\ninit = "x weights, git 0123abc"\n')
    card = load_card(path)
    assert card.lineage == (LineageStep("a.toml", "scratch"), LineageStep("b.toml", "x weights, git 0123abc"))
    assert load_card(_write_card(tmp_path / "d", 'name = "x"\narch = "a"\nrole = "student"\n')).lineage == ()


def test_shipped_cards_state_their_lineage():
    """Every card in the zoo: trained from scratch at the start, its own recipe at the end, and every recipe of the
    lineage still in the tree loads."""
    from harness.distill.config import load_recipe

    repo = Path(__file__).resolve().parents[1]
    cards = list_cards(repo / "students")
    assert len(cards) == 4
    for card in cards:
        assert card.lineage[0].init == "scratch" and card.lineage[-1].recipe == card.recipe, card.name
        assert all(step.init != "scratch" for step in card.lineage[1:]), card.name
        for step in card.lineage:
            if (repo / step.recipe).is_file():
                load_recipe(repo / step.recipe)
        assert (repo / card.recipe).is_file(), card.name


def test_missing_card_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="card.toml"):
        load_card(tmp_path / "card.toml")


def test_zoo_specs_put_teachers_first_with_their_cards(student, tmp_path):
    from harness.run import zoo_specs

    _write_card(tmp_path / "students" / "zz_teacher", f'name = "zz_teacher"\narch = "{SMALL}"\nrole = "teacher"\n'
                                                       'input_size = 96\nflip_test = true\n')
    specs = zoo_specs(tmp_path / "students")
    assert [(s.label, s.role, s.input_size) for s in specs] == [("zz_teacher", "teacher", 96), ("tiny", "student", 128)]
    assert [s.flip_test for s in specs] == [True, False]
    assert load_card(tmp_path / "students" / "zz_teacher" / "card.toml").build().flip_test
    assert specs[0].ckpt is None and specs[1].ckpt == str(tmp_path / "students" / "tiny" / "weights.pt")
