"""`python -m harness.bench.distill`: the cost of distillation's machinery, measured in one run.

Times three things on the same random batch, interleaved round-robin so a busy machine slows all three alike:
    student  one training step of the student alone (forward, mask loss, backward, clip, optimizer, scheduler)
    teacher  one forward of the frozen teacher (no grad)
    kd       one distillation step (teacher forward + recorders + student step + KD losses)
and prints the medians and ratio = kd / (student + teacher): what recorders, hooks and KD losses add on top of the
two unavoidable passes. The target is a ratio ≤ 1.2. Both steps are the trainer's own `train_step`.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from harness.core.constants import NUM_BITS
from harness.distill.config import recipe_from_dict
from harness.distill.trainer import Trainer

SEED_DISTILLER = {
    "type": "ConfigurableDistiller",
    "student_recorders": {"logits": {"type": "ModuleOutputs", "source": "backbone.last_layer.3"}},
    "teacher_recorders": {"logits": {"type": "ModuleOutputs", "source": "backbone.last_layer.3"}},
    "distill_losses": {"loss_l2": {"type": "L2Loss", "loss_weight": 10.0}},
    "loss_forward_mappings": {"loss_l2": {"s_feature": {"from_student": True, "recorder": "logits"},
                                          "t_feature": {"from_student": False, "recorder": "logits"}}},
}


def _recipe(args: argparse.Namespace, teacher: bool):
    raw = {
        "run": {"threads": args.threads, "device": args.device, "max_steps": 10 ** 6},
        "model": {"name": args.student, "input_size": args.input_size},
        "data": {"image_size": args.image_size, "batch_size": args.batch_size},
        "validation": {"metric": "val_iou"},
        "schedule": {"warmup_steps": 0},
    }
    if teacher:
        raw["teacher"] = {"name": args.teacher, "input_size": args.input_size}
        raw["distiller"] = SEED_DISTILLER
    return recipe_from_dict(raw, "bench")


def _timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        plain = Trainer(_recipe(args, teacher=False), Path(tmp) / "plain", progress=False)
        kd = Trainer(_recipe(args, teacher=True), Path(tmp) / "kd", progress=False)
        try:
            size, device = args.image_size, kd.device
            generator = torch.Generator().manual_seed(0)
            batch = {
                "image": torch.rand(args.batch_size, 3, size, size, generator=generator),
                "mask": (torch.rand(args.batch_size, 1, size, size, generator=generator) > 0.5).float(),
                "has_mask": torch.ones(args.batch_size, dtype=torch.bool),
                "secret": torch.zeros(args.batch_size, NUM_BITS),
                "has_secret": torch.zeros(args.batch_size, dtype=torch.bool),
            }
            images = batch["image"].to(device)
            teacher = kd.algorithm.teacher
            runs = {"student": lambda: plain.train_step(batch), "teacher": lambda: teacher(images),
                    "kd": lambda: kd.train_step(batch)}
            times: dict[str, list[float]] = {name: [] for name in runs}
            for rep in range(args.warmup + args.steps):
                for name, fn in runs.items():
                    seconds = _timed(fn)
                    if rep >= args.warmup:
                        times[name].append(seconds)
        finally:
            plain.close()
            kd.close()
    result = {name: statistics.median(values) for name, values in times.items()}
    result["ratio"] = result["kd"] / (result["student"] + result["teacher"])
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.bench.distill", description=__doc__.splitlines()[0])
    p.add_argument("--student", default="hrnet_w18_small_v1")
    p.add_argument("--teacher", default="hrnet_w18")
    p.add_argument("--input-size", type=int, default=192)
    p.add_argument("--image-size", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=5, help="timed repetitions (medians are reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result = measure(args)
    print(f"student {args.student} / teacher {args.teacher}, input {args.input_size}, batch {args.batch_size}, "
          f"{args.threads} thread(s), {args.device}, median of {args.steps}")
    print(f"  student training step : {result['student'] * 1000:9.1f} ms")
    print(f"  teacher forward       : {result['teacher'] * 1000:9.1f} ms")
    print(f"  KD step               : {result['kd'] * 1000:9.1f} ms")
    print(f"  ratio KD / (student + teacher) = {result['ratio']:.3f}  (target <= 1.2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
