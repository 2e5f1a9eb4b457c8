"""`python -m harness.cost [--models NAME ...] [--hw 400] [--latency]`: one markdown row per registered localizer and
sdecoder (bare network, factory defaults, batch 1); the counting itself: `harness.models.cost`."""
from __future__ import annotations

import argparse

import torch
from tabulate import tabulate

from harness.core.constants import PHOTO_SIDE
from harness.models.cost import measure_latency, model_cost
from harness.models.registry import create_model, get_entry, list_models, load_plugins

# ----------------------------------------------------------------------------------------------------- CLI

HEADERS = ["model", "kind", "params", "tensors", "conv GMACs", "total GMACs", "GFLOPs (2×MACs)", "fp32 MiB",
           "CPU p50 ms"]


def cost_row(name: str, hw: int, latency: bool, warmup: int, repeats: int) -> list:
    model = create_model(name).eval()
    cost = model_cost(model, (hw, hw))
    p50 = "—"
    if latency:
        p50 = f"{measure_latency(model, torch.rand(1, 3, hw, hw), warmup, repeats).p50_ms:.1f}"
    return [name, get_entry(name).kind, f"{cost.params:,}", cost.tensors, f"{cost.conv_gmacs:.2f}",
            f"{cost.total_gmacs:.2f}", f"{cost.gflops:.2f}", f"{cost.fp32_mib:.1f}", p50]


def deployed_table(zoo: str, runtimes: list[str], out: str, threads: int, warmup: int, repeats: int) -> str:
    """Every card under `zoo`, eager then under each runtime, timed as deployed (`harness.run.runtime`)."""
    from dataclasses import replace

    from harness.run.runtime import runtime_latency
    from harness.run.spec import zoo_specs

    rows = []
    for spec in zoo_specs(zoo):
        for runtime in ["torch", *runtimes]:
            r = runtime_latency(replace(spec, runtime=runtime), out, threads, warmup, repeats)
            rows.append([r["model"], runtime, f"{r['p50_ms']:.1f} / {r['p95_ms']:.1f}", f"{r['throughput_ips']:.1f}",
                         "—" if r["mib_on_disk"] is None else f"{r['mib_on_disk']:.2f}"])
    head = (f"Localizers as deployed: a 400×400 photo in (the wrapper's resize inside), CPU, {threads} intra-op "
            f"thread(s) for torch and ONNX Runtime alike; batch 1 over {repeats} runs after {warmup} warm-up; "
            "throughput at the evaluator's batch 8. Eager's size on disk is its checkpoint (the zoo's are fp16).\n\n")
    return head + tabulate(rows, headers=["model", "runtime", "p50 / p95 ms", "images/s @8", "MiB on disk"],
                           tablefmt="github", disable_numparse=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.cost", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, help="registered names (default: all)")
    parser.add_argument("--hw", type=int, default=PHOTO_SIDE, help=f"square input side (default {PHOTO_SIDE})")
    parser.add_argument("--latency", action="store_true", help="also measure CPU latency (batch 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--zoo", default=None, metavar="DIR",
                        help="instead: the model cards under DIR as deployed, eager and each --runtime (batch-1 "
                             "p50/p95 ms, images/s at batch 8, MiB on disk), at --threads (default 1) for both")
    parser.add_argument("--runtime", action="append", default=[], choices=("onnxruntime", "onnxruntime-int8"),
                        help="--zoo: a runtime to time beside eager (repeatable; default both)")
    parser.add_argument("--out", default="runs/deploy_cost", help="--zoo: folder for the exported files")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (repeatable): its registered models are counted too")
    args = parser.parse_args(argv)
    load_plugins(args.plugin)
    if args.zoo:
        print(deployed_table(args.zoo, args.runtime or ["onnxruntime", "onnxruntime-int8"], args.out,
                             args.threads or 1, args.warmup, args.repeats))
        return
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    names = args.models or list_models("localizer") + list_models("sdecoder")
    rows = [cost_row(n, args.hw, args.latency, args.warmup, args.repeats) for n in names]
    print(f"Input 1×3×{args.hw}×{args.hw}, eval mode; MACs from fvcore (1 MAC = 2 FLOPs); "
          f"latency: CPU, {torch.get_num_threads()} thread(s), median of {args.repeats}.\n")
    print(tabulate(rows, headers=HEADERS, tablefmt="github", disable_numparse=True))


if __name__ == "__main__":
    main()
