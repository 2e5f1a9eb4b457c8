"""Students as deployed: every localizer family exports to ONNX and reads as eager does; an evaluation under ONNX
Runtime agrees with eager sample-tilt by sample-tilt; int8 runs end to end; BatchNorm demo mode with a runtime is
refused before the run; a team's own .onnx file loads by path."""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
import torch

from harness.data.reference import ReferenceSetConfig, reference_set
from harness.deploy import TOLERANCE, OrtModule, read_card
from harness.deploy.onnx_export import export_onnx, max_abs_diff
from harness.models import build_localizer
from harness.run import EvalError, evaluate
from harness.run.options import eval_config

ROOT = Path(__file__).resolve().parent.parent
STUDENTS = ROOT / "students"
FAMILIES = ("hrnet_w18_small_v1", "pidnet_s", "lite_hrnet_18")


@pytest.fixture(autouse=True)
def _one_thread():
    ambient = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(ambient)


@pytest.mark.parametrize("arch", FAMILIES)
def test_export_matches_eager(arch, tmp_path):
    """The Localizer (resize + normalisation + the trained student) at input 64: ORT fp32 logits within 1e-4 of
    eager on decoder2-sized views, for any batch (the file's batch is dynamic)."""
    eager = build_localizer(arch, 64, STUDENTS / f"student_{arch}" / "weights.pt").eval()
    path = export_onnx(eager, tmp_path / f"{arch}.onnx")
    views = torch.rand(3, 3, 400, 400, generator=torch.Generator().manual_seed(1))
    diff = max_abs_diff(eager, path, views, threads=1, batch_size=3)
    print(f"{arch}: max |ORT fp32 − eager| = {diff:.3g} (tolerance {TOLERANCE:g})")
    assert diff <= TOLERANCE
    one = OrtModule(path, threads=1)(views[:1])
    assert one.shape == (1, 1, 16 if arch != "pidnet_s" else 8, 16 if arch != "pidnet_s" else 8)


@pytest.fixture(scope="module")
def tiny_reference(tmp_path_factory) -> Path:
    return reference_set(ReferenceSetConfig(n_marked=4, n_clean=1, seed=1000), tmp_path_factory.mktemp("ref"))


def _cfg(localizers: list[str], runtimes: list[str], data: Path, bn_mode: str = "eval"):
    return eval_config({"localizer": localizers, "runtime": runtimes, "sdecoder": "reference_sdecoder",
                        "data": str(data), "tilts": "-5,0,5", "bn_mode": bn_mode, "workers": 0})


def test_onnxruntime_agrees_with_eager_int8_runs_own_file_loads(tiny_reference, tmp_path):
    """One run, the shipped PIDNet student four times: eager, ORT fp32 exported on the fly, ORT int8 calibrated on
    the reference world's calibration set, and a team's own .onnx file by path."""
    ckpt = STUDENTS / "student_pidnet_s" / "weights.pt"
    own = export_onnx(build_localizer("pidnet_s", 128, ckpt), tmp_path / "own" / "mine.onnx")
    cfg = _cfg([f"eager:pidnet_s={ckpt}", f"ort:pidnet_s={ckpt}", f"int8:pidnet_s={ckpt}", f"own:onnx={own}"],
               ["ort=onnxruntime", "int8=onnxruntime-int8"], tiny_reference)
    assert [(m.label, m.runtime) for m in cfg.localizers] == [
        ("eager", "torch"), ("ort", "onnxruntime"), ("int8", "onnxruntime-int8"), ("own", "onnxruntime")]
    out = tmp_path / "run"
    summary = evaluate(cfg, out, progress=False)
    rows = list(csv.DictReader((out / "records.csv").open()))
    by = {}
    for r in rows:
        by.setdefault(r["model"], {})[(r["sample_id"], r["tilt_deg"])] = r
    eager = by["eager"]
    assert all(r["status"] == "ok" for r in eager.values())
    for name in ("ort", "own"):
        same = sum(by[name][k]["chosen_angle"] == r["chosen_angle"] and by[name][k]["bits"] == r["bits"]
                   for k, r in eager.items())
        rate = same / len(eager)
        print(f"{name} vs eager: identical chosen angle and bits on {same}/{len(eager)} sample-tilts "
              f"({100 * rate:.1f} %)")
        assert rate >= 0.99
    int8 = by["int8"]
    assert len(int8) == len(eager) and all(r["status"] in ("ok", "roi_empty") for r in int8.values())
    same = sum(int8[k]["bits"] == r["bits"] for k, r in eager.items())
    print(f"int8 vs eager: identical bits on {same}/{len(eager)} sample-tilts")
    models = {r.model for r in summary.results}
    assert {"eager", "ort", "int8", "own"} <= models
    run = json.loads((out / "run.json").read_text())
    assert run["onnxruntime"] and summary.provenance.versions["onnxruntime"] == run["onnxruntime"]
    assert [m.get("runtime", "torch") for m in run["config"]["localizers"]] == [
        "torch", "onnxruntime", "onnxruntime-int8", "onnxruntime"]
    int8_files = sorted((out / "deploy").glob("*.int8.onnx"))
    assert len(int8_files) == 1
    card = read_card(int8_files[0])
    assert card["quantization"]["format"] == "QDQ" and card["quantization"]["calibration"]["dataset_sha256"]
    assert card["source_sha256"] == run["checkpoints"]["int8"]


def test_demo_mode_with_a_runtime_is_refused(tiny_reference):
    with pytest.raises(EvalError, match="BatchNorm demo mode"):
        _cfg(["eager:pidnet_s", "ort:pidnet_s"], ["ort=onnxruntime"], tiny_reference, bn_mode="demo")


def test_runtime_options(tiny_reference):
    cfg = _cfg(["pidnet_s"], ["onnxruntime", "onnxruntime-int8"], tiny_reference)
    assert [(m.label, m.runtime, m.role) for m in cfg.localizers] == [
        ("pidnet_s", "torch", "teacher"), ("pidnet_s@ort", "onnxruntime", "student"),
        ("pidnet_s@int8", "onnxruntime-int8", "student")]
    with pytest.raises(ValueError, match="no localizer has that label"):
        _cfg(["pidnet_s"], ["ort=onnxruntime"], tiny_reference)
    with pytest.raises(ValueError, match="RUNTIME one of"):
        _cfg(["ort:pidnet_s"], ["ort=tensorrt"], tiny_reference)


def test_export_command_writes_checked_file_and_card(tmp_path, capsys):
    from harness.deploy.__main__ import main

    ckpt = STUDENTS / "student_hrnet_w18_small_v1" / "weights.pt"
    assert main(["export", "--localizer", f"small:hrnet_w18_small_v1={ckpt}", "--input-size", "64",
                 "--out", str(tmp_path)]) == 0
    card = read_card(tmp_path / "small.onnx")
    assert card["input_size"] == 64 and card["opset"] >= 17 and card["max_abs_diff"] <= TOLERANCE
    assert card["versions"]["onnxruntime"] and card["source_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert "small.onnx" in capsys.readouterr().out


def test_deployment_table_agreement(tmp_path):
    from harness.outputs.deployment import agreement

    head = "model,sample_id,tilt_deg,roi_source,status,bits\n"
    rows = ["eager,a,0,predicted,ok,ff", "eager,b,0,predicted,ok,0f", "eager,a,0,oracle,ok,ff",
            "q,a,0,predicted,ok,ff", "q,b,0,predicted,ok,1f"]
    (tmp_path / "records.csv").write_text(head + "\n".join(rows) + "\n")
    assert agreement(tmp_path / "records.csv", {"q": "eager"}) == {"q": 0.5}
