"""`harness.distill train --resume` with a last.pt that cannot be trusted: exit 2, the file named, what to do."""
from __future__ import annotations

import os

import pytest
import torch

import harness.distill.__main__ as cli
import harness.distill.trainer as trainer_module
from harness.distill.checkpoint import LastCheckpointError, load_last
from tests.distill_world import BUILDERS, tiny_recipe


class RunsCode:
    """Unpickling this would run a shell command (what a planted last.pt would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    recipe = tiny_recipe(max_steps=2)
    trainer_module.train(recipe, tmp_path / "run", builders=BUILDERS, progress=False, until_step=1)
    assert (tmp_path / "run" / "last.pt").is_file()
    monkeypatch.setattr(cli, "_load", lambda args: recipe)
    real_train = trainer_module.train
    monkeypatch.setattr(trainer_module, "train", lambda *a, **kw: real_train(*a, builders=BUILDERS, **kw))
    return tmp_path / "run"


def _resume(run_dir, capsys) -> tuple[int, str]:
    code = cli.main(["train", "recipe.toml", "--out", str(run_dir), "--resume", "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def _says_what_to_do(text: str, path) -> None:
    assert str(path) in text and "delete it" in text and "new --out" in text
    assert "weights_only=False" not in text and "weights_only` set to `False" not in text
    assert "Traceback" not in text


def test_a_truncated_last_pt_exits_2_naming_the_file(run_dir, capsys):
    last = run_dir / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    code, text = _resume(run_dir, capsys)
    assert code == 2 and "truncated or corrupt" in text
    _says_what_to_do(text, last)
    last.write_bytes(b"")  # cut to nothing: torch raises EOFError with no message
    code, text = _resume(run_dir, capsys)
    assert code == 2 and "truncated or corrupt" in text
    _says_what_to_do(text, last)


def test_a_last_pt_that_would_run_code_is_refused_without_running_it(run_dir, capsys, tmp_path):
    marker = tmp_path / "ran"
    last = run_dir / "last.pt"
    saved = torch.load(last, weights_only=True)
    torch.save({**saved, "step": RunsCode(marker)}, last)
    code, text = _resume(run_dir, capsys)
    assert code == 2 and "refused" in text and "system" in text
    _says_what_to_do(text, last)
    assert not marker.exists()


def test_a_last_pt_of_something_else_is_refused(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "last.pt")
    with pytest.raises(LastCheckpointError, match=r"last.pt: not a last.pt this trainer wrote \(no config"):
        load_last(tmp_path / "last.pt")
