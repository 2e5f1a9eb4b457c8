"""The training loop: one recipe → one run directory, resumable, the same on 1 process or under torchrun.

Run directory:
    config.json   the resolved recipe (every default filled in)
    log.jsonl     one JSON object per line: "start", "train" (every log_every steps), "val", "end"
    last.pt       everything needed to continue (student, connectors, optimizer, scheduler, scaler, RNG states,
                  step, config, teacher checkpoint sha256, best metric so far); written atomically
    student.pt    the best student by the validation metric: the bare network's fp32 state_dict (strict load)

A step: the teacher (if any) runs under no_grad with its recorders on; the student runs with its recorders on; the
loss is the ground-truth mask loss (BCE + Dice) + the decode loss (optional) + the distillation losses; AMP on CUDA
only (every loss computes in fp32); gradients clipped; scheduler stepped per step.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from harness.core.distributed import resolve_device, setup_distributed
from harness.distill.checkpoint import (
    atomic_save,
    fp32_state_dict,
    load_last,
    rng_state,
    set_rng_state,
    student_checkpoint,
    write_json,
)
from harness.distill.config import DataConfig, Recipe, RecipeError, ValidationConfig, recipe_from_dict
from harness.distill.data import FolderScenes, SceneSource, StepBatchSampler, SynthScenes, TrainSamples, make_loader
from harness.distill.losses import DecodeLoss, MaskLoss
from harness.distill.validate import Validator, synth_validation_set
from harness.pipeline.batched import NamedLocalizer

# Keys that may change between a run and its resumption: they do not change what is computed.
RESUMABLE_CHANGES = {"run.log_every", "run.threads", "run.device", "data.num_workers"}
TASK_LOSS_NAMES = {"loss_bce", "loss_dice", "loss_decode", "loss", "grad_norm"}


# ---------------------------------------------------------------------------------------------- parts


def default_localizer(name: str, input_size: int, ckpt: str | None) -> nn.Module:
    from harness.models import build_localizer

    return build_localizer(name, input_size, ckpt or None)


def default_sdecoder(key: int) -> nn.Module:
    from harness.codec import ReferenceSDecoder

    return ReferenceSDecoder(key)


def default_train_scenes(cfg: DataConfig) -> SceneSource:
    if cfg.source == "folder":
        return FolderScenes(cfg.root)
    from harness.data.synth import SynthConfig

    return SynthScenes(SynthConfig(kind=cfg.synth_kind, background=cfg.synth_background, n=cfg.synth_size,
                                   seed=cfg.synth_seed, tilt_range=cfg.tilt_deg, key=cfg.key,
                                   same_source=cfg.synth_same_source, in_place=cfg.synth_in_place))


def default_val_set(cfg: ValidationConfig, data: DataConfig, run_dir: Path) -> Path:
    """The validation folder: `root`, else a synthetic set generated into the run directory (once)."""
    if cfg.root:
        return Path(cfg.root)
    return synth_validation_set(run_dir / "val_set", cfg.size, cfg.synth_seed, data.key, data.tilt_deg)


@dataclass(frozen=True)
class Builders:
    """Where the trainer gets its models and scenes; tests pass tiny stand-ins."""

    localizer: Callable[[str, int, str | None], nn.Module] = default_localizer
    sdecoder: Callable[[int], nn.Module] = default_sdecoder
    train_scenes: Callable[[DataConfig], SceneSource] = default_train_scenes
    val_set: Callable[[ValidationConfig, DataConfig, Path], Path] = default_val_set


@dataclass
class RunState:
    """What changes as the run goes and must survive a resume."""

    step: int = 0
    best_metric: float = -math.inf
    best_step: int = -1
    bad_validations: int = 0
    teacher_metrics: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False


# ---------------------------------------------------------------------------------------------- schedule


def lr_factor(step: int, recipe: Recipe) -> float:
    """Linear warm-up from warmup_ratio to 1, then cosine or poly decay to min_lr_ratio at max_steps."""
    sched, total = recipe.schedule, recipe.run.max_steps
    if step < sched.warmup_steps:
        return sched.warmup_ratio + (1 - sched.warmup_ratio) * step / sched.warmup_steps
    progress = min(1.0, (step - sched.warmup_steps) / max(1, total - sched.warmup_steps))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if sched.name == "cosine" else (1 - progress) ** sched.power
    return sched.min_lr_ratio + (1 - sched.min_lr_ratio) * decay


def make_optimizer(params: list[nn.Parameter], recipe: Recipe) -> torch.optim.Optimizer:
    opt = recipe.optim
    if opt.name == "sgd":
        return torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    return torch.optim.AdamW(params, lr=opt.lr, weight_decay=opt.weight_decay)


# ---------------------------------------------------------------------------------------------- logging


class JsonlLog:
    """Append-only JSONL log; on resume, lines past the checkpoint's step are dropped so none appear twice."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not self.path.exists():
            return
        import json

        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, **record: Any) -> None:
        if not self.enabled:
            return
        import json

        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record, sort_keys=False) + "\n")


def _config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(saved) | set(current))
    out = []
    for key in keys:
        a, b = saved.get(key), current.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_differences(a, b, name + ".")
        elif (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
            out.append(name)
    return out


# ---------------------------------------------------------------------------------------------- trainer


class Trainer:
    def __init__(self, recipe: Recipe, out_dir: str | Path, builders: Builders = Builders(), progress: bool = True):
        self.recipe, self.out = recipe, Path(out_dir)
        self.builders, self.progress = builders, progress
        torch.set_num_threads(recipe.run.threads)
        self.device = resolve_device(recipe.run.device)
        self.dist = setup_distributed(self.device)
        self.amp = recipe.optim.amp and self.device.type == "cuda"
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.log = JsonlLog(self.out / "log.jsonl", self.dist.main)
        self.state = RunState()
        torch.manual_seed(recipe.run.seed)
        self._build_models()
        self._build_losses()
        self._build_optimizer()
        self.validator: Validator | None = None

    # --- construction

    def _build_models(self) -> None:
        recipe, build = self.recipe, self.builders.localizer
        self.student = build(recipe.model.name, recipe.model.input_size, recipe.model.init_ckpt or None)
        self.student.to(self.device)
        self.teacher_sha256 = ""
        self.algorithm = None
        if recipe.teacher is not None:
            from harness.distill.distiller import SingleTeacherDistill

            teacher = build(recipe.teacher.name, recipe.teacher.input_size, recipe.teacher.ckpt or None)
            if recipe.teacher.ckpt:
                from harness.models import sha256_file

                self.teacher_sha256 = sha256_file(recipe.teacher.ckpt)
            self.algorithm = SingleTeacherDistill(
                self.student, teacher.to(self.device), recipe.distiller or {},
                teacher_ckpt_sha256=self.teacher_sha256,
                calculate_student_loss=recipe.teacher.calculate_student_loss,
            ).to(self.device)
            self._dry_run()
        self.student_call: nn.Module = self.student
        if self.dist.world_size > 1:
            self.student_call = DistributedDataParallel(self.student, device_ids=None if self.device.type == "cpu"
                                                        else [self.device.index])

    def _dry_run(self) -> None:
        """One random batch through student, teacher and distiller before training (a local generator: the run's
        random streams are untouched); names must not collide with the ground-truth losses."""
        clash = set(self.algorithm.distiller.distill_losses) & TASK_LOSS_NAMES
        if clash:
            raise RecipeError(f"distiller.distill_losses.{sorted(clash)[0]}: the name is taken by a ground-truth loss")
        if len(self.algorithm.distiller.distill_losses) == 0:
            return
        size = self.recipe.data.image_size
        images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(self.device)
        self.log.write(event="dry_run", step=self.state.step, **self.algorithm.dry_run(images))

    def _build_losses(self) -> None:
        loss = self.recipe.loss
        self.mask_loss = MaskLoss(loss.bce_weight, loss.dice_weight)
        self.sdecoder = self.builders.sdecoder(self.recipe.data.key).to(self.device).eval().requires_grad_(False)
        self.decode_loss = (DecodeLoss(loss.decode_weight, self.sdecoder, angles=loss.decode_angles)
                            if loss.decode_weight > 0 else None)

    def _build_optimizer(self) -> None:
        params = [p for p in self.student.parameters() if p.requires_grad]
        if self.algorithm is not None:
            params += list(self.algorithm.distiller.connectors.parameters())
        self.optimizer = make_optimizer(params, self.recipe)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(step, self.recipe))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

    # --- checkpoints

    def _last_state(self) -> dict[str, Any]:
        return {
            "student": fp32_state_dict(self.student.backbone),
            "connectors": (self.algorithm.distiller.connectors.state_dict() if self.algorithm is not None else {}),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "step": self.state.step,
            "run_state": {"best_metric": self.state.best_metric, "best_step": self.state.best_step,
                          "bad_validations": self.state.bad_validations,
                          "teacher_metrics": dict(self.state.teacher_metrics),
                          "stopped_early": self.state.stopped_early},
            "config": self.recipe.to_dict(),
            "teacher_sha256": self.teacher_sha256,
            "world_size": self.dist.world_size,
        }

    def save_last(self) -> None:
        if self.dist.main:
            atomic_save(self._last_state(), self.out / "last.pt")

    def save_best(self) -> None:
        if self.dist.main:
            atomic_save(student_checkpoint(fp32_state_dict(self.student.backbone), self.recipe.to_dict()),
                        self.out / "student.pt")

    def resume(self) -> None:
        path = self.out / "last.pt"
        if not path.exists():
            print(f"{path} does not exist yet: starting a new run")
            return
        saved = load_last(path)
        # Read back through the recipe schema: a run saved before a field existed ran with its default.
        saved_config = recipe_from_dict(saved["config"], str(path)).to_dict()
        differences = [k for k in _config_differences(saved_config, self.recipe.to_dict())
                       if k not in RESUMABLE_CHANGES]
        if differences:
            raise RecipeError(f"{path}: the recipe differs from the run's saved config at {', '.join(differences)}; "
                              "start a new run directory instead")
        if saved["teacher_sha256"] != self.teacher_sha256:
            raise RecipeError(f"{path}: the teacher checkpoint changed (sha256 {saved['teacher_sha256'][:12]} → "
                              f"{self.teacher_sha256[:12]})")
        if saved.get("world_size", 1) != self.dist.world_size:
            raise RecipeError(f"{path}: saved by {saved.get('world_size', 1)} process(es), resumed by "
                              f"{self.dist.world_size}: the global batch would change")
        self.student.backbone.load_state_dict(saved["student"], strict=True)
        if self.algorithm is not None:
            self.algorithm.distiller.connectors.load_state_dict(saved["connectors"], strict=True)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        set_rng_state(saved["rng"])
        self.state = RunState(step=saved["step"], **saved["run_state"])
        self.log.truncate_after(self.state.step)

    # --- one step

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        images = batch["image"].to(self.device, non_blocking=True)
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext()
        with autocast:
            if self.algorithm is not None:
                logits, losses = self.algorithm.forward_train(images, self.student_call)
            else:
                logits, losses = self.student_call(images), {}
        losses = dict(losses)
        if self.algorithm is None or self.algorithm.calculate_student_loss:
            losses.update(self.mask_loss(logits, batch["mask"].to(self.device), batch["has_mask"].to(self.device)))
        if self.decode_loss is not None:
            losses["loss_decode"] = self.decode_loss(logits, images, batch["secret"].to(self.device),
                                                     batch["has_secret"].to(self.device))
        total = sum(losses.values())
        if not torch.isfinite(total):
            raise FloatingPointError(f"step {self.state.step}: non-finite loss "
                                     f"{ {k: float(v) for k, v in losses.items()} }")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self._sync_connector_grads()
        self.scaler.unscale_(self.optimizer)
        grad_norm = self._clip()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        out = {k: float(v.detach()) for k, v in losses.items()}
        out.update(loss=float(total.detach()), grad_norm=grad_norm)
        return out

    def _clip(self) -> float:
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        if self.recipe.optim.grad_clip > 0:
            return float(torch.nn.utils.clip_grad_norm_(params, self.recipe.optim.grad_clip))
        return float(torch.nn.utils.clip_grad_norm_(params, float("inf")))

    def _sync_connector_grads(self) -> None:
        """DDP averages the student's gradients; connectors live outside it, so average theirs here."""
        if self.dist.world_size <= 1 or self.algorithm is None:
            return
        for p in self.algorithm.distiller.connectors.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.dist.world_size

    # --- validation

    def _validator(self) -> Validator:
        if self.validator is None:
            cfg = self.recipe.validation
            root = self.builders.val_set(cfg, self.recipe.data, self.out)
            self.validator = Validator(root, self.sdecoder, self.recipe.loss.decode_angles, cfg.bn_mode,
                                       cfg.batch_size, self.device)
        return self.validator

    def validate(self) -> dict[str, float]:
        """The student through the batched decoder2 (rank 0 only); the teacher too, once per run, or at every
        validation when the student crops with the teacher's mask (`student_use_teacher_mask`)."""
        use_teacher_mask = self.recipe.validation.student_use_teacher_mask
        teacher = self.algorithm.teacher if self.algorithm is not None else None
        if use_teacher_mask and teacher is None:
            raise RecipeError("validation.student_use_teacher_mask needs a [teacher]")
        models = [NamedLocalizer("student", "student", self.student, "teacher" if use_teacher_mask else None)]
        if teacher is not None and (use_teacher_mask or not self.state.teacher_metrics):
            models.append(NamedLocalizer("teacher", "teacher", teacher))
        scores = self._validator().evaluate(models)
        student = scores["student"]
        metrics = {"student_bit_acc": student["bit_acc"], "val_iou": student["iou"],
                   "student_roi_empty_rate": student["roi_empty_rate"]}
        if "teacher" in scores and not self.state.teacher_metrics:
            self.state.teacher_metrics = {"teacher_bit_acc": scores["teacher"]["bit_acc"],
                                          "teacher_iou": scores["teacher"]["iou"],
                                          "teacher_roi_empty_rate": scores["teacher"]["roi_empty_rate"]}
        metrics.update(self.state.teacher_metrics)
        return metrics

    def _validate_and_select(self) -> bool:
        """Validate, keep the best student, count patience; True when training should stop early."""
        stop = torch.zeros(1)
        if self.dist.main:
            metrics = self.validate()
            value = metrics[self.recipe.validation.metric]
            improved = value > self.state.best_metric
            if improved:
                self.state.best_metric, self.state.best_step, self.state.bad_validations = value, self.state.step, 0
                self.save_best()
            else:
                self.state.bad_validations += 1
            patience = self.recipe.run.early_stop_patience
            stop[0] = float(patience > 0 and self.state.bad_validations >= patience)
            self.log.write(event="val", step=self.state.step, **metrics, best=improved,
                           best_metric=self.state.best_metric, best_step=self.state.best_step)
        if self.dist.world_size > 1:
            dist.broadcast(stop, src=0)
        return bool(stop[0])

    # --- the loop

    def run(self, until_step: int | None = None) -> RunState:
        """Train from the current step to max_steps (or until_step: an interruption, for tests and time limits)."""
        recipe = self.recipe
        if self.dist.main:
            write_json(recipe.to_dict(), self.out / "config.json")
        end = min(recipe.run.max_steps, until_step if until_step is not None else recipe.run.max_steps)
        self.log.write(event="start", step=self.state.step, world_size=self.dist.world_size, device=str(self.device),
                       amp=self.amp, teacher_sha256=self.teacher_sha256)
        if not self._finished():  # a finished run has nothing to do
            validated_at = self._steps(end)
            if self._finished():
                self._finish(validated_at)
        return self.state

    def _finished(self) -> bool:
        return self.state.stopped_early or self.state.step >= self.recipe.run.max_steps

    def _steps(self, end: int) -> int:
        """Train up to step `end` (or an early stop); returns the step of the last validation (-1: none)."""
        recipe = self.recipe
        loader = self._loader(self.state.step, end)
        bar = self._progress_bar(end)
        tick, validated_at = time.perf_counter(), -1
        window: list[dict[str, float]] = []
        self.student.train()
        for batch in loader:
            window.append(self.train_step(batch))
            self.state.step += 1
            bar.update(1)
            step = self.state.step
            if step % recipe.run.log_every == 0 or step == end:
                now = time.perf_counter()
                mean = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
                self.log.write(event="train", step=step, lr=self.scheduler.get_last_lr()[0],
                               sec_per_step=(now - tick) / len(window), **mean)
                bar.set_postfix(loss=f"{mean['loss']:.4f}")
                tick, window = now, []
            if recipe.run.val_every and step % recipe.run.val_every == 0:
                validated_at = step
                self.state.stopped_early = self._validate_and_select()
                self.student.train()
                tick = time.perf_counter()  # validation time is not a training step's time
            if step % recipe.run.ckpt_every == 0 or step == end or self.state.stopped_early:
                self.save_last()
            if self.state.stopped_early:
                break
        bar.close()
        return validated_at

    def _finish(self, validated_at: int) -> None:
        """The last step's validation (unless it just ran, or the run stopped early), then the "end" event."""
        if not self.state.stopped_early and validated_at != self.state.step:
            self.state.stopped_early = self._validate_and_select()
            self.save_last()
        self.log.write(event="end", step=self.state.step, best_metric=self.state.best_metric,
                       best_step=self.state.best_step, stopped_early=self.state.stopped_early)

    def _loader(self, start: int, end: int):
        cfg = self.recipe.data
        scenes = self.builders.train_scenes(cfg)
        sampler = StepBatchSampler(len(scenes), cfg.batch_size, self.recipe.run.seed, start, end, cfg.tilt_deg,
                                   cfg.hflip, self.dist.rank, self.dist.world_size, cfg.conditions)
        return make_loader(TrainSamples(scenes, cfg.image_size), sampler, cfg.num_workers)

    def _progress_bar(self, end: int):
        from tqdm import tqdm

        return tqdm(total=end, initial=self.state.step, disable=not (self.progress and self.dist.main),
                    desc=self.out.name, dynamic_ncols=True, mininterval=5.0)

    def close(self) -> None:
        if self.algorithm is not None:
            self.algorithm.close()


def train(recipe: Recipe, out_dir: str | Path, resume: bool = False, builders: Builders = Builders(),
          until_step: int | None = None, progress: bool = True) -> RunState:
    """Train `recipe` into `out_dir`; with `resume`, continue from `out_dir/last.pt` (same result as no break)."""
    trainer = Trainer(recipe, out_dir, builders, progress)
    try:
        if resume:
            trainer.resume()
        return trainer.run(until_step)
    finally:
        trainer.close()
