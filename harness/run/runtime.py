"""Localizers as deployed in an evaluation: `--runtime LABEL=onnxruntime|onnxruntime-int8` and
`--localizer LABEL:onnx=FILE.onnx`, turned into ModelSpec runtimes, and the ORT-backed modules the evaluator runs.

The same checkpoint under several runtimes is several models to the evaluator (one label each): records, summaries,
the gate and `harness.paired` compare them as they compare models. A checkpoint without a file is exported on the
fly into `<run>/deploy/` (fp32 checked against eager; int8 calibrated on the reference world's calibration set).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch.nn as nn

from harness.models import build_localizer, sha256_file
from harness.run.spec import ONNX_ARCH, RUNTIMES, EvalError, ModelSpec

DEPLOY_DIR = "deploy"


SUFFIXES = {"onnxruntime": "@ort", "onnxruntime-int8": "@int8"}


def apply_runtimes(localizers: list[ModelSpec], items: list[str]) -> list[ModelSpec]:
    """`--runtime` values applied to the localizers: `LABEL=RUNTIME` runs the localizer LABEL under RUNTIME (give
    the same checkpoint twice, `--localizer eager:pidnet_s=w.pt --localizer ort:pidnet_s=w.pt --runtime
    ort=onnxruntime`); a bare `RUNTIME` adds a copy of every eager localizer under it, labelled NAME@ort or
    NAME@int8 (role student: one teacher per run), after all of them. An `onnx` file without a runtime runs fp32."""
    by_label, extra = {}, []
    for item in items:
        label, sep, runtime = item.partition("=")
        label, runtime = label.strip(), runtime.strip()
        if not sep and label in SUFFIXES:
            if label in extra:
                raise ValueError(f"--runtime {label!r} given twice")
            extra.append(label)
            continue
        if not label or runtime not in RUNTIMES:
            raise ValueError(f"--runtime {item!r}: expected LABEL=RUNTIME or RUNTIME, RUNTIME one of {RUNTIMES}")
        if label in by_label:
            raise ValueError(f"--runtime {label!r} given twice")
        by_label[label] = runtime
    unknown = sorted(set(by_label) - {m.label for m in localizers})
    if unknown:
        raise ValueError(f"--runtime {unknown}: no localizer has that label (--localizer LABEL:NAME=CKPT labels one)")
    out = []
    for m in localizers:
        runtime = by_label.get(m.label, "onnxruntime" if m.arch == ONNX_ARCH and m.runtime == "torch" else m.runtime)
        out.append(replace(m, runtime=runtime, input_size=None if m.arch == ONNX_ARCH else m.input_size))
    for runtime in extra:
        out += [replace(m, name=m.label + SUFFIXES[runtime], runtime=runtime, role="student")
                for m in out if m.runtime == "torch" and m.arch != ONNX_ARCH]
    return out


def uses_onnxruntime(localizers) -> bool:
    return any(m.runtime != "torch" for m in localizers)


def onnxruntime_version() -> str:
    from harness.deploy.runtime import ort_version
    return ort_version()


def build_deployed(spec: ModelSpec, out_dir: str | Path, threads: int) -> tuple[nn.Module, str | None]:
    """The ORT-backed module for `spec` (runtime onnxruntime or onnxruntime-int8) and the sha256 of what it was
    made from (the checkpoint, or the team's .onnx file). Exports and quantises into `out_dir/deploy/`."""
    from harness.deploy.build import deploy_module, quantize_file
    from harness.deploy.onnx_export import DeployError
    from harness.deploy.runtime import OrtModule

    deploy_dir = Path(out_dir) / DEPLOY_DIR
    try:
        if spec.arch == ONNX_ARCH:
            if spec.ckpt is None or not Path(spec.ckpt).is_file():
                raise EvalError(f"localizer {spec.label!r}: onnx=FILE needs an existing .onnx file, got {spec.ckpt}")
            path = Path(spec.ckpt)
            if spec.runtime == "onnxruntime-int8":
                path, _ = quantize_file(path, deploy_dir, spec.label)
            return OrtModule(path, threads, spec.runtime), sha256_file(spec.ckpt)
        def eager():  # built only when a file must be exported (a reused file's card names the same checkpoint)
            return build_localizer(spec.arch, spec.input_size, spec.ckpt, spec.flip_test)
        source_sha = sha256_file(spec.ckpt) if spec.ckpt is not None else None
        # one fp32 export per checkpoint and setting, shared by the labels that run it (ORT fp32 and int8)
        name = f"{spec.arch}_{spec.input_size or 400}{'_flip' if spec.flip_test else ''}_" \
               f"{(source_sha or 'random')[:12]}"
        path, _ = deploy_module(eager, spec.runtime, deploy_dir, name, arch=spec.arch, source=spec.ckpt,
                                source_sha256=source_sha, input_size=spec.input_size, flip_test=spec.flip_test,
                                threads=threads)
        return OrtModule(path, threads, spec.runtime), source_sha
    except DeployError as err:
        raise EvalError(f"localizer {spec.label!r} under {spec.runtime}: {err}") from err


def runtime_latency(spec: ModelSpec, out_dir: str | Path, threads: int = 1, warmup: int = 3, repeats: int = 20,
                    batch: int = 8, batch_repeats: int = 5) -> dict:
    """The localizer `spec` as deployed (its runtime; exported or reused under `out_dir/deploy/`) timed on the CPU
    at `threads` intra-op threads for torch and ORT alike: batch-1 p50/p95 ms of a 400×400 photo (after warm-up),
    throughput (images/s) at the evaluator's batch, and the size on disk of what it runs from (the .onnx file, or
    the checkpoint for eager: the zoo ships fp16 weights)."""
    import torch

    from harness.models.cost import measure_latency, measure_throughput

    ambient = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if spec.runtime == "torch":
            module = spec.build().eval()
            size = Path(spec.ckpt).stat().st_size if spec.ckpt else None
        else:
            module, _ = build_deployed(spec, out_dir, threads)
            size = module.size_bytes()
        gen = torch.Generator().manual_seed(0)
        photo = torch.rand(1, 3, 400, 400, generator=gen)
        views = torch.rand(batch, 3, 400, 400, generator=gen)
        lat = measure_latency(module, photo, warmup, repeats)
        ips = measure_throughput(module, views, 1, batch_repeats)
    finally:
        torch.set_num_threads(ambient)
    return {"model": spec.label, "arch": spec.arch, "runtime": spec.runtime, "threads": threads,
            "p50_ms": lat.p50_ms, "p95_ms": lat.p95_ms, "repeats": repeats, "batch": batch,
            "throughput_ips": ips, "mib_on_disk": None if size is None else size / 2**20}
