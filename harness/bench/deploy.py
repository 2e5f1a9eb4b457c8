"""`python -m harness.bench.deploy`: the shipped zoo as deployed, eager against ONNX Runtime fp32 and int8, on this
CPU in one run (not a timed test: figures for the docs).

    python -m harness.bench.deploy [--zoo students] [--n 4] [--tilts -5,0,5] [--threads 1] [--out runs/bench_deploy]

1. Localizers: per model card and runtime, batch-1 p50/p95 ms of a 400×400 photo and throughput (images/s) at the
   evaluator's batch (8), with the ratio to eager; size on disk.
2. Evaluations: the whole zoo through decoder2 on a small reference set (`--n` watermarked scenes, seed 1000, one
   clean), once per runtime, same settings (BatchNorm eval, batch 8, 0 workers, `--threads`); wall time, the
   localizers' forward seconds, mean bit accuracy. The files are exported before the clock starts (each run reuses
   them), so the wall times compare inference, not export.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from tabulate import tabulate

from harness.data.reference import ReferenceSetConfig, reference_set
from harness.run import EvalConfig, ModelSpec, evaluate, zoo_specs
from harness.run.options import join_option_values, parse_tilts
from harness.run.runtime import build_deployed, runtime_latency

RUNTIMES = ("torch", "onnxruntime", "onnxruntime-int8")


def localizer_rows(specs: list[ModelSpec], out: Path, threads: int, repeats: int) -> list[dict]:
    rows = []
    for spec in specs:
        eager = None
        for runtime in RUNTIMES:
            r = runtime_latency(replace(spec, runtime=runtime), out / "files", threads, 3, repeats)
            eager = eager or r
            r["speedup"] = r["throughput_ips"] / eager["throughput_ips"]
            rows.append(r)
            print(f"  {r['model']:28s} {runtime:18s} p50 {r['p50_ms']:7.1f} ms  {r['throughput_ips']:6.1f} img/s @8 "
                  f"({r['speedup']:.2f}× eager)", file=sys.stderr)
    return rows


def evaluation_rows(specs: list[ModelSpec], data: Path, tilts: tuple[float, ...], out: Path, threads: int) -> list:
    rows = []
    for runtime in RUNTIMES:
        localizers = tuple(replace(m, runtime=runtime) for m in specs)
        run = out / f"eval_{runtime}"
        shutil.rmtree(run, ignore_errors=True)
        for m in localizers:  # export before the clock (the run reuses the files: their cards match)
            if runtime != "torch":
                build_deployed(m, run, threads)
        cfg = EvalConfig(localizers=localizers, sdecoder=ModelSpec("reference_sdecoder", role="sdecoder"),
                         data=str(data), tilts=tilts, bn_mode="eval", workers=0, threads=threads, oracle=False,
                         mode="bench")
        start = time.perf_counter()
        summary = evaluate(cfg, run, progress=False)
        wall = time.perf_counter() - start
        forward = sum(m["localizer_s"] for m in summary.timing["models"].values())
        accs = [r.bit_acc.mean for r in summary.results if r.roi_source == "predicted"]
        rows.append({"runtime": runtime, "wall_s": wall, "localizer_s": forward,
                     "mean_bit_acc": sum(accs) / len(accs)})
        print(f"  evaluation {runtime:18s} wall {wall:6.1f} s  localizer forwards {forward:6.1f} s", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.bench.deploy", description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default="students", help="folder of model cards (default students)")
    ap.add_argument("--n", type=int, default=4, help="watermarked reference scenes evaluated (default 4)")
    ap.add_argument("--tilts", default="-5,0,5", help="tilts of the evaluations (default -5,0,5)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads, torch and ORT alike (default 1)")
    ap.add_argument("--repeats", type=int, default=20, help="batch-1 timing runs per model and runtime")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_deploy"))
    args = ap.parse_args(join_option_values(list(sys.argv[1:] if argv is None else argv)))
    specs = list(zoo_specs(args.zoo))
    if not specs:
        print(f"harness.bench.deploy: no model cards under {args.zoo}", file=sys.stderr)
        return 2
    data = reference_set(ReferenceSetConfig(n_marked=args.n, n_clean=1, seed=1000), args.out / "data")
    loc = localizer_rows(specs, args.out, args.threads, args.repeats)
    evals = evaluation_rows(specs, data, parse_tilts(args.tilts), args.out, args.threads)
    print(f"\nCPU: {torch.backends.cpu.get_cpu_capability()}, {args.threads} intra-op thread(s) for torch and ORT; "
          f"batch-1 p50/p95 over {args.repeats} runs; throughput at batch 8.\n")
    print(tabulate([[r["model"], r["runtime"], f"{r['p50_ms']:.1f} / {r['p95_ms']:.1f}", f"{r['throughput_ips']:.1f}",
                     f"{r['speedup']:.2f}×", "—" if r["mib_on_disk"] is None else f"{r['mib_on_disk']:.2f}"]
                    for r in loc],
                   headers=["model", "runtime", "b1 p50 / p95 ms", "img/s @8", "× eager @8", "MiB on disk"],
                   tablefmt="github", disable_numparse=True))
    base = evals[0]["wall_s"]
    print(f"\nEvaluation of the zoo ({len(specs)} localizers) on {args.n} + 1 reference scenes × tilts {args.tilts}:\n")
    print(tabulate([[r["runtime"], f"{r['wall_s']:.1f}", f"{r['wall_s'] / base:.2f}×", f"{r['localizer_s']:.1f}",
                     f"{100 * r['mean_bit_acc']:.2f}"] for r in evals],
                   headers=["runtime", "wall s", "× eager", "localizer forwards s", "mean bit acc %"],
                   tablefmt="github", disable_numparse=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
