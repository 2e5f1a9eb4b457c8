"""Recorders: hook lifecycle, step popping, fire-count checks, clear errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from harness.distill.recorders import RecorderError, RecorderManager, build_recorder


class Twice(nn.Module):
    """conv1 fires twice per forward (as in MMRazor's recorder tutorial), conv2 once."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 1, 1)
        self.conv2 = nn.Conv2d(1, 1, 1)

    def forward(self, x):
        return self.conv2(self.conv1(x) + self.conv1(x + 1))


def test_records_outputs_and_inputs_of_one_step():
    model = Twice()
    x = torch.randn(1, 1, 2, 2)
    manager = RecorderManager({"out": dict(type="ModuleOutputs", source="conv2"),
                               "inp": dict(type="ModuleInputs", source="conv2")}).initialize(model)
    with manager, manager.recording():
        y = model(x)
        data = manager.pop_all()
    torch.testing.assert_close(data["out"][0], y)
    torch.testing.assert_close(data["inp"][0][0], model.conv1(x) + model.conv1(x + 1))


def test_outputs_are_popped_each_step_and_not_recorded_outside_a_step():
    model = Twice()
    with RecorderManager({"out": dict(type="ModuleOutputs", source="conv2")}).initialize(model) as manager:
        model(torch.randn(1, 1, 2, 2))  # outside a recorded step: nothing stored
        assert manager.get_recorder("out").data_buffer == []
        with manager.recording():
            model(torch.randn(1, 1, 2, 2))
        assert len(manager.pop_all()["out"]) == 1
        assert manager.get_recorder("out").data_buffer == []
        with pytest.raises(RecorderError, match="did not fire"):
            manager.pop_all()


def test_hooks_are_removed_on_close():
    model = Twice()
    with RecorderManager({"a": dict(type="ModuleOutputs", source="conv1"),
                          "b": dict(type="ModuleInputs", source="conv2")}).initialize(model) as manager:
        assert len(model.conv1._forward_hooks) == 1 and len(model.conv2._forward_hooks) == 1
    assert len(model.conv1._forward_hooks) == 0 and len(model.conv2._forward_hooks) == 0
    assert not any(r.active for r in manager.recorders.values())


def test_a_module_firing_several_times_is_an_error_unless_declared():
    model = Twice()
    with RecorderManager({"c1": dict(type="ModuleOutputs", source="conv1")}, "student").initialize(model) as manager:
        with manager.recording():
            model(torch.randn(1, 1, 2, 2))
        with pytest.raises(RecorderError, match="student recorder 'c1'.*fired 2 times"):
            manager.pop_all()
    allowed = RecorderManager({"c1": dict(type="ModuleOutputs", source="conv1", allow_multiple=True)})
    with allowed.initialize(model):
        with allowed.recording():
            model(torch.randn(1, 1, 2, 2))
        assert len(allowed.pop_all()["c1"]) == 2


def test_a_module_that_never_fires_is_an_error():
    model = Twice()
    model.unused = nn.Conv2d(1, 1, 1)
    with RecorderManager({"u": dict(type="ModuleOutputs", source="unused")}).initialize(model) as manager:
        with manager.recording():
            model(torch.randn(1, 1, 2, 2))
        with pytest.raises(RecorderError, match="'unused' did not fire"):
            manager.pop_all()


def test_unknown_source_suggests_close_names():
    with pytest.raises(RecorderError, match="no submodule 'conv3'.*did you mean .*'conv1'"):
        RecorderManager({"x": dict(type="ModuleOutputs", source="conv3")}).initialize(Twice())


@pytest.mark.parametrize("cfg, match", [
    (dict(type="MethodOutputs", source="a.b"), "not supported"),
    (dict(type="Nope", source="conv1"), "unknown recorder type"),
    (dict(type="ModuleOutputs"), r"student_recorders\.x\.source"),
    (dict(type="ModuleOutputs", source="conv1", sauce=1), r"student_recorders\.x\.sauce"),
])
def test_bad_recorder_configs_name_the_key(cfg, match):
    with pytest.raises(RecorderError, match=match):
        build_recorder("x", cfg, "student")


def test_compiled_model_is_refused():
    class OptimizedModule(nn.Module):  # the class name torch.compile gives its wrapper
        pass

    with pytest.raises(RecorderError, match="compile"):
        build_recorder("x", dict(type="ModuleOutputs", source="a"), "student").initialize(OptimizedModule())
