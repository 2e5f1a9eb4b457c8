"""`python -m harness.bench.conditions`: what each camera condition costs per photo, against the zoo's forwards.

In one process, on the same photos (the reference evaluation world, or `--data`):

    condition  `resolve(name).apply(photo, mask, severity)` per photo and point (photo and ground-truth mask),
               averaged over the condition's default grid without its identity (the work a condition adds)
    views      the whole photo side of that point: condition, fit, three search rotations with the EDT fill and
               the mask's twins (what a DataLoader worker does per point; the tilt row is today's chain)
    forwards   the floor: every localizer of the zoo over the point's three views, batched 8 at a time

and prints, per condition, the milliseconds of each and the ratio condition / forwards (target ≤ 10 %). One process,
one thread by default (`--threads`), as the evaluation runs.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from tabulate import tabulate

from harness.conditions import list_conditions, resolve
from harness.core.bn import inference_context
from harness.core.constants import CONDITION_SEED
from harness.data import load_dataset, load_image
from harness.data.reference import ReferenceSetConfig, reference_set
from harness.pipeline.views import ViewSpec, _views_at_point, ground_truth_mask
from harness.run.spec import zoo_specs

TARGET = 0.10  # a condition should cost at most this share of the forwards it feeds


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m harness.bench.conditions", description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=6, help="photos (default 6)")
    ap.add_argument("--data", default=None, help="a dataset folder (default: a reference set made in a temp folder)")
    ap.add_argument("--zoo", default="students", help="model cards whose localizers give the floor (default students)")
    ap.add_argument("--conditions", default=None, help="comma list of conditions (default: every registered one, "
                    "and tilt+jpeg, perspective+blur)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bn-mode", choices=("demo", "eval"), default="eval")
    return ap


def _photos(args, tmp: Path):
    root = Path(args.data) if args.data else reference_set(ReferenceSetConfig(n_marked=args.n, n_clean=0), tmp / "d")
    samples = list(load_dataset(root).samples)[: args.n]
    return [(i, load_image(s.path), ground_truth_mask(s)) for i, s in enumerate(samples)]


def _timed(fn, repeat: int = 1) -> float:
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


@torch.inference_mode()
def forward_floor(photos, args) -> tuple[float, list[str]]:
    """Seconds per photo and point: every zoo localizer over the point's three views (batched)."""
    specs = zoo_specs(args.zoo)
    if not specs:
        raise SystemExit(f"no model cards under {args.zoo}")
    spec = ViewSpec((0.0,))
    views = torch.cat([torch.from_numpy(_views_at_point(p, m, ("tilt", (0.0,)), i, spec)[0]) for i, p, m in photos])
    images = (views.float() / 255).permute(0, 3, 1, 2).contiguous().to(args.device)
    seconds = 0.0
    for s in specs:
        module = s.build().to(args.device)
        with inference_context(module, args.bn_mode):
            module(images[: args.batch_size])  # warm-up
            t0 = time.perf_counter()
            for start in range(0, images.shape[0], args.batch_size):
                module(images[start:start + args.batch_size])
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds += time.perf_counter() - t0
    return seconds / len(photos), [s.label for s in specs]


def condition_costs(photos, names: list[str]) -> list[tuple[str, float, float]]:
    """Per condition: seconds per photo and point of the condition alone, and of the point's whole photo side."""
    spec = ViewSpec((0.0,))
    rows = []
    for name in names:
        c = resolve(name)
        grid = [s for s in c.default_grid() if s != c.identity]
        apply_s = views_s = 0.0
        for index, photo, mask in photos:
            for severity in grid:
                apply_s += _timed(lambda: c.apply(photo, mask, severity, CONDITION_SEED, index))
                views_s += _timed(lambda: _views_at_point(photo, mask, (c.name, severity), index, spec))
        n = len(photos) * len(grid)
        rows.append((name, apply_s / n, views_s / n))
    return rows


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.conditions.split(",") if args.conditions else [*list_conditions(), "tilt+jpeg", "perspective+blur"]
    with tempfile.TemporaryDirectory() as tmp:
        photos = _photos(args, Path(tmp))
        for index, photo, mask in photos[:1]:  # warm the caches (EDT maps) and the imports once
            for name in names:
                c = resolve(name)
                c.apply(photo, mask, c.default_grid()[-1], CONDITION_SEED, index)
        floor, models = forward_floor(photos, args)
        costs = condition_costs(photos, names)
    size = "×".join(str(v) for v in photos[0][1].size)
    print(f"{len(photos)} photos ({size}), forwards of {', '.join(models)} over 3 views per point at batch "
          f"{args.batch_size}, {args.threads} thread(s), {args.device}: {1000 * floor:.1f} ms per photo and point")
    rows = [[name, f"{1000 * a:.2f}", f"{1000 * v:.2f}", f"{100 * a / floor:.2f}", f"{100 * v / floor:.2f}",
             "ok" if a <= TARGET * floor else "OVER"] for name, a, v in costs]
    print(tabulate(rows, headers=["condition", "condition ms", "photo side ms (condition+fit+3 views)",
                                  "condition / forwards %", "photo side / forwards %", f"≤ {100 * TARGET:g} %"],
                   tablefmt="github", disable_numparse=True))
    return 0 if all(a <= TARGET * floor for _, a, _ in costs) else 1


if __name__ == "__main__":
    sys.exit(main())
