"""The distiller: MMRazor's ConfigurableDistiller schema, without mmcv/mmengine, and a single frozen teacher.

A distiller dict ports unchanged from an MMRazor config:

    distiller = dict(
        type='ConfigurableDistiller',
        student_recorders=dict(logits=dict(type='ModuleOutputs', source='backbone.last_layer.3')),
        teacher_recorders=dict(logits=dict(type='ModuleOutputs', source='backbone.last_layer.3')),
        connectors=dict(),                                     # name → dict(type='ConvBNConnector', ...)
        distill_losses=dict(loss_l2=dict(type='L2Loss', loss_weight=10)),
        loss_forward_mappings=dict(
            loss_l2=dict(s_feature=dict(from_student=True, recorder='logits'),
                         t_feature=dict(from_student=False, recorder='logits'))))

Everything is checked when the distiller is built, and every error names the offending key: each loss's mapping
must cover exactly the arguments of its `forward` (no missing required argument, no unknown one), every recorder
and connector named must exist. `SingleTeacherDistill.dry_run` then runs one batch and requires finite KD losses,
greater than zero when student and teacher differ.

Mapping entry keys: `from_student` (bool, required), `recorder` (name; `from_recorder` is accepted as in MMRazor's
tutorial), `connector` (optional name), `data_idx` (optional: pick one element of a tuple/list record, e.g. one input
of a ModuleInputs recorder), `record_idx` (optional: which call of an allow_multiple recorder, default 0).
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn as nn

from harness.distill.connectors import build_connector, resolve_type
from harness.distill.losses import LOSSES
from harness.distill.recorders import RecorderManager


class DistillerConfigError(ValueError):
    """A distiller dict that cannot work; the message starts with the offending key path."""


MAPPING_KEYS = {"from_student", "recorder", "from_recorder", "connector", "data_idx", "record_idx"}


def build_loss(name: str, cfg: dict[str, Any]) -> nn.Module:
    where = f"distill_losses.{name}"
    kind, options = resolve_type(cfg, LOSSES, where, "loss", DistillerConfigError,
                                 shape="dict(type=..., loss_weight=..., ...)")
    accepted = set(inspect.signature(LOSSES[kind].__init__).parameters) - {"self"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise DistillerConfigError(f"{where}.{unknown[0]}: {kind} takes no option {unknown[0]!r}; "
                                   f"options: {', '.join(sorted(accepted))}")
    return LOSSES[kind](**options)


def forward_arguments(loss: nn.Module) -> tuple[set[str], set[str]]:
    """(required, optional) argument names of the loss's forward."""
    params = [p for p in inspect.signature(loss.forward).parameters.values()
              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return ({p.name for p in params if p.default is p.empty}, {p.name for p in params if p.default is not p.empty})


class ConfigurableDistiller(nn.Module):
    """Recorders on student and teacher, connectors, distillation losses and the mappings between them."""

    def __init__(self, student_recorders: dict | None = None, teacher_recorders: dict | None = None,
                 distill_deliveries: dict | None = None, connectors: dict | None = None,
                 distill_losses: dict | None = None, loss_forward_mappings: dict | None = None,
                 type: str = "ConfigurableDistiller"):  # noqa: A002  (the config key is `type`)
        super().__init__()
        if type != "ConfigurableDistiller":
            raise DistillerConfigError(f"distiller.type: {type!r} is not supported; use 'ConfigurableDistiller'")
        if distill_deliveries:
            raise DistillerConfigError("distiller.distill_deliveries: deliveries override intermediate results by "
                                       "patching methods and are not supported")
        self.student_recorders = RecorderManager(student_recorders, "student")
        self.teacher_recorders = RecorderManager(teacher_recorders, "teacher")
        self.connectors = nn.ModuleDict({n: build_connector(n, c) for n, c in (connectors or {}).items()})
        self.distill_losses = nn.ModuleDict({n: build_loss(n, c) for n, c in (distill_losses or {}).items()})
        self.loss_forward_mappings = dict(loss_forward_mappings or {})
        self._check_mappings()

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "ConfigurableDistiller":
        known = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise DistillerConfigError(f"distiller.{unknown[0]}: unknown key; known: {', '.join(sorted(known))}")
        return cls(**cfg)

    # --- build-time checks

    def _check_mappings(self) -> None:
        mappings = self.loss_forward_mappings
        for name in mappings:
            if name not in self.distill_losses:
                raise DistillerConfigError(f"loss_forward_mappings.{name}: no loss {name!r} in distill_losses "
                                           f"({', '.join(sorted(self.distill_losses)) or 'none'})")
        for name, loss in self.distill_losses.items():
            if name not in mappings:
                raise DistillerConfigError(f"loss_forward_mappings.{name}: missing; every distill loss needs one")
            required, optional = forward_arguments(loss)
            mapping = mappings[name]
            if not isinstance(mapping, dict):
                raise DistillerConfigError(f"loss_forward_mappings.{name}: expected a dict of arguments")
            for arg in sorted(required - set(mapping)):
                raise DistillerConfigError(f"loss_forward_mappings.{name}.{arg}: missing; "
                                           f"{type(loss).__name__}.forward requires {', '.join(sorted(required))}")
            for arg, spec in mapping.items():
                if arg not in required | optional:
                    raise DistillerConfigError(f"loss_forward_mappings.{name}.{arg}: {type(loss).__name__}.forward "
                                               f"has no argument {arg!r}; it takes "
                                               f"{', '.join(sorted(required | optional))}")
                self._check_spec(f"loss_forward_mappings.{name}.{arg}", spec)

    def _check_spec(self, where: str, spec: Any) -> None:
        if not isinstance(spec, dict):
            raise DistillerConfigError(f"{where}: expected dict(from_student=..., recorder=...), got {spec!r}")
        unknown = sorted(set(spec) - MAPPING_KEYS)
        if unknown:
            raise DistillerConfigError(f"{where}.{unknown[0]}: unknown key; known: {', '.join(sorted(MAPPING_KEYS))}")
        if not isinstance(spec.get("from_student"), bool):
            raise DistillerConfigError(f"{where}.from_student: required, true or false")
        recorder = spec.get("recorder", spec.get("from_recorder"))
        manager = self.student_recorders if spec["from_student"] else self.teacher_recorders
        if recorder not in manager:
            side = "student" if spec["from_student"] else "teacher"
            raise DistillerConfigError(f"{where}.recorder: no {side} recorder {recorder!r}; {side}_recorders: "
                                       f"{', '.join(sorted(manager.recorders)) or '(none)'}")
        connector = spec.get("connector")
        if connector is not None and connector not in self.connectors:
            raise DistillerConfigError(f"{where}.connector: no connector {connector!r}; connectors: "
                                       f"{', '.join(sorted(self.connectors)) or '(none)'}")

    # --- running

    def prepare(self, student: nn.Module, teacher: nn.Module) -> None:
        """Hook the recorders into the models (module paths are relative to these modules)."""
        self.student_recorders.initialize(student)
        self.teacher_recorders.initialize(teacher)

    def compute_distill_losses(self) -> dict[str, torch.Tensor]:
        """Pop this step's records (checking fire counts) and evaluate every loss on its mapped inputs."""
        records = {True: self.student_recorders.pop_all(), False: self.teacher_recorders.pop_all()}
        losses = {}
        for name, loss in self.distill_losses.items():
            kwargs = {arg: self._fetch(records, spec) for arg, spec in self.loss_forward_mappings[name].items()}
            losses[name] = loss(**kwargs)
        return losses

    def _fetch(self, records: dict[bool, dict[str, list[Any]]], spec: dict[str, Any]) -> Any:
        recorder = spec.get("recorder", spec.get("from_recorder"))
        data = records[spec["from_student"]][recorder][spec.get("record_idx", 0)]
        if spec.get("data_idx") is not None:
            data = data[spec["data_idx"]]
        if spec.get("connector") is not None:
            data = self.connectors[spec["connector"]](data)
        return data

    def close(self) -> None:
        self.student_recorders.close()
        self.teacher_recorders.close()


class FrozenTeacher(nn.Module):
    """The teacher, frozen for good: eval mode whatever `train()` is asked (BatchNorm statistics and dropout fixed),
    no parameter requires grad, and its forward runs under no_grad."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


class SingleTeacherDistill(nn.Module):
    """Student + frozen teacher + distiller: `forward_train(images) -> (student logits, {kd loss name: value})`.

    MMRazor's options that change behaviour are fixed to the safe choice: teacher_trainable=False and a fully
    evaluated teacher (not only its norm layers); `calculate_student_loss` keeps the ground-truth loss on.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, distiller: dict[str, Any] | ConfigurableDistiller,
                 teacher_ckpt_sha256: str = "", calculate_student_loss: bool = True):
        super().__init__()
        self.student = student
        self.teacher = FrozenTeacher(teacher)
        self.distiller = (distiller if isinstance(distiller, ConfigurableDistiller)
                          else ConfigurableDistiller.from_config(distiller))
        self.teacher_ckpt_sha256 = teacher_ckpt_sha256
        self.calculate_student_loss = calculate_student_loss
        self.distiller.prepare(student, self.teacher.module)

    def forward_train(self, images: torch.Tensor, student_call: nn.Module | None = None
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One recorded step: teacher (no grad) then student; `student_call` may be the DDP-wrapped student."""
        with self.distiller.teacher_recorders.recording():
            self.teacher(images)
        with self.distiller.student_recorders.recording():
            logits = (student_call or self.student)(images)
        return logits, self.distiller.compute_distill_losses()

    @torch.no_grad()
    def dry_run(self, images: torch.Tensor) -> dict[str, float]:
        """One batch through both models, as in a training step but with nothing updated (the student's buffers,
        BatchNorm statistics included, are restored): every KD loss must be finite, and greater than zero unless
        student and teacher hold identical weights. Mismatched shapes fail inside the losses."""
        buffers = {name: buffer.clone() for name, buffer in self.student.named_buffers()}
        try:
            _, losses = self.forward_train(images)
        finally:
            for name, buffer in self.student.named_buffers():
                buffer.copy_(buffers[name])
        values = {name: float(value) for name, value in losses.items()}
        for name, value in values.items():
            if not torch.isfinite(torch.tensor(value)):
                raise DistillerConfigError(f"distill_losses.{name}: dry run gave a non-finite loss ({value})")
        if not _same_weights(self.student, self.teacher.module):
            for name, value in values.items():
                if value <= 0:
                    raise DistillerConfigError(f"distill_losses.{name}: dry run gave {value} although student and "
                                               "teacher differ; the loss cannot teach anything (see the loss's doc)")
        return values

    def close(self) -> None:
        self.distiller.close()


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)
