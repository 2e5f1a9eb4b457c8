"""Recipe bases: `_base_ = "other.toml"` (or a list) deep-merges other recipes under a recipe, MMEngine style."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness.distill.config import RecipeError, load_recipe, load_recipe_tables

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "students" / "recipes"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


BASE = """
[run]
max_steps = 900
val_every = 900
[model]
input_size = 128
[optim]
lr = 2e-4
weight_decay = 1e-4
"""


def test_a_base_merges_under_the_recipe(tmp_path):
    _write(tmp_path / "_base_" / "ft.toml", BASE)
    recipe = load_recipe(_write(tmp_path / "r.toml", """_base_ = "_base_/ft.toml"
[model]
name = "pidnet_s"
"""))
    assert recipe.model.name == "pidnet_s" and recipe.model.input_size == 128
    assert recipe.run.max_steps == 900 and recipe.optim.lr == 2e-4


def test_the_recipe_overrides_its_base_key_by_key(tmp_path):
    _write(tmp_path / "base.toml", BASE)
    recipe = load_recipe(_write(tmp_path / "r.toml", """_base_ = "base.toml"
[run]
max_steps = 300
[optim]
lr = 1e-3
"""))
    assert recipe.run.max_steps == 300 and recipe.run.val_every == 900  # the sibling key survives
    assert recipe.optim.lr == 1e-3 and recipe.optim.weight_decay == 1e-4


def test_a_list_of_bases_later_ones_win(tmp_path):
    _write(tmp_path / "a.toml", "[run]\nmax_steps = 100\nlog_every = 5\n[model]\nname = \"pidnet_s\"\n")
    _write(tmp_path / "b.toml", "[run]\nmax_steps = 200\n")
    tables = load_recipe_tables(_write(tmp_path / "r.toml", '_base_ = ["a.toml", "b.toml"]\n[run]\nseed = 3\n'))
    assert tables == {"run": {"max_steps": 200, "log_every": 5, "seed": 3}, "model": {"name": "pidnet_s"}}
    assert "_base_" not in tables


def test_nested_tables_and_chained_bases_merge_deeply(tmp_path):
    _write(tmp_path / "root.toml", """
[distiller.distill_losses.loss_l2]
type = "L2Loss"
loss_weight = 10.0
[loss]
decode_angles = [0.0, 3.0, -3.0]
""")
    _write(tmp_path / "sub" / "mid.toml",
           '_base_ = "../root.toml"\n[distiller.distill_losses.loss_l2]\nloss_weight = 5.0\n')
    tables = load_recipe_tables(_write(tmp_path / "sub" / "r.toml", """_base_ = "mid.toml"
[distiller.distill_losses.loss_l2]
normalize = false
[loss]
decode_angles = [0.0]
"""))
    assert tables["distiller"]["distill_losses"]["loss_l2"] == {"type": "L2Loss", "loss_weight": 5.0,
                                                                 "normalize": False}
    assert tables["loss"]["decode_angles"] == [0.0]  # a list is replaced, not merged


def test_a_base_does_not_change_between_recipes_that_share_it(tmp_path):
    _write(tmp_path / "base.toml", BASE)
    first = load_recipe(_write(tmp_path / "r1.toml", '_base_ = "base.toml"\n[run]\nmax_steps = 1\n'))
    second = load_recipe(_write(tmp_path / "r2.toml", '_base_ = "base.toml"\n'))
    assert first.run.max_steps == 1 and second.run.max_steps == 900


def test_a_missing_base_names_both_files(tmp_path):
    recipe = _write(tmp_path / "r.toml", '_base_ = "_base_/nope.toml"\n')
    with pytest.raises(RecipeError, match=r"r\.toml: base recipe .*_base_/nope\.toml not found"):
        load_recipe(recipe)


def test_a_missing_base_of_a_base_names_the_chain(tmp_path):
    _write(tmp_path / "mid.toml", '_base_ = "gone.toml"\n')
    with pytest.raises(RecipeError, match=r"mid\.toml: base recipe .*gone\.toml not found \(base chain: .*r\.toml -> "
                                          r".*mid\.toml -> .*gone\.toml\)"):
        load_recipe(_write(tmp_path / "r.toml", '_base_ = "mid.toml"\n'))


def test_a_cycle_is_an_error_naming_the_files(tmp_path):
    _write(tmp_path / "a.toml", '_base_ = "b.toml"\n')
    _write(tmp_path / "b.toml", '_base_ = "a.toml"\n')
    with pytest.raises(RecipeError, match=r"_base_ cycle: .*a\.toml -> .*b\.toml -> .*a\.toml"):
        load_recipe(tmp_path / "a.toml")
    with pytest.raises(RecipeError, match=r"_base_ cycle: .*self\.toml -> .*self\.toml"):
        load_recipe(_write(tmp_path / "self.toml", '_base_ = "self.toml"\n'))


def test_a_base_that_is_not_toml_is_an_error(tmp_path):
    _write(tmp_path / "base.json", "{}")
    with pytest.raises(RecipeError, match=r"r\.toml: base recipe .*base\.json is not a \.toml file"):
        load_recipe(_write(tmp_path / "r.toml", '_base_ = "base.json"\n'))
    _write(tmp_path / "broken.toml", "[run\nseed = 1\n")
    with pytest.raises(RecipeError, match=r"broken\.toml: not valid TOML \(base of .*r2\.toml\)"):
        load_recipe(_write(tmp_path / "r2.toml", '_base_ = "broken.toml"\n'))
    with pytest.raises(RecipeError, match=r"r3\.toml: _base_ must be a path or a list of paths"):
        load_recipe(_write(tmp_path / "r3.toml", "_base_ = 3\n"))


def test_a_merged_recipe_is_still_checked_key_by_key(tmp_path):
    _write(tmp_path / "base.toml", "[run]\nmax_stepz = 3\n")
    with pytest.raises(RecipeError, match=r"r\.toml: run\.max_stepz: unknown key"):
        load_recipe(_write(tmp_path / "r.toml", '_base_ = "base.toml"\n'))


def _old_recipe(name: str, tmp_path: Path) -> Path | None:
    """The recipe as the commit before bases existed wrote it out in full (None outside a git checkout)."""
    try:
        text = subprocess.run(["git", "show", f"656f35a:students/recipes/{name}"], cwd=REPO, check=True,
                              capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return _write(tmp_path / name, text)


@pytest.mark.parametrize("name", sorted(p.name for p in RECIPES.glob("*.toml")))
def test_shipped_recipes_resolve_to_the_settings_they_were_trained_with(name, tmp_path):
    old = _old_recipe(name, tmp_path)
    if old is None:
        pytest.skip("the full-length recipe is not in this checkout's history")
    assert load_recipe(RECIPES / name) == load_recipe(old)
