"""Acceptance: a team's own world through every entry point, with no edit to the project.

Inside the test's tmp dir: a plug-in package outside harness/ (a torchvision LR-ASPP localizer and a small SDecoder,
registered by importing it), checkpoints saved the way official training scripts save them (a `model.` prefix, a
dict with `state_dict` and `epoch`, the loss's `loss.criterion.weight` buffer, a PIDNet `augment=True` file, an
mmpose-style backbone file), and photos without masks (a few photos of a generated reference set, one carrying an
EXIF orientation tag). It runs `harness.data check`, the quick suites on that world (`python -m pytest suites
--plugin --data --tilts --bn-mode demo --results-dir`, a subprocess), the report with `--out` and the gate.
"""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from harness.data.reference import ReferenceSetConfig, reference_set

REPO = Path(__file__).resolve().parents[1]
PLUGIN = "own_world_models"  # a module name of the team's, not the project's
INPUT = 64  # tiny input sizes keep the whole world fast on two cores
N_PHOTOS = 4

PLUGIN_SOURCE = '''
"""A team's own models: importing this module registers them with the harness."""
import torch.nn as nn
from torchvision.models.segmentation import lraspp_mobilenet_v3_large

from harness.models.registry import register_model


class LRASPP(nn.Module):
    """torchvision's LR-ASPP returns {"out": logits}; a localizer returns the logits."""

    def __init__(self, num_classes: int = 1):
        super().__init__()
        self.net = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes)

    def forward(self, x):
        return self.net(x)["out"]


@register_model("localizer")
def team_lraspp(num_classes: int = 1) -> nn.Module:
    return LRASPP(num_classes)


@register_model("sdecoder")
def team_sdecoder(width: int = 8) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 5, 4, 2), nn.ReLU(), nn.Conv2d(width, 2 * width, 3, 4, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(16 * 2 * width, 100))
'''


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("own_world")
    plugins = root / "plugins"
    plugins.mkdir()
    (plugins / f"{PLUGIN}.py").write_text(textwrap.dedent(PLUGIN_SOURCE))
    sys.path.insert(0, str(plugins))
    from harness.models.registry import load_plugin

    load_plugin(PLUGIN)
    paths = {"root": root, "plugins": plugins, "data": _photos_without_masks(root)}
    paths.update(_official_checkpoints(root / "ckpt"))
    yield paths
    sys.path.remove(str(plugins))


def _photos_without_masks(root: Path) -> Path:
    """A few photos of a generated reference set in a manifest with no mask_file and no quad; the first carries an
    EXIF orientation tag (pixels as stored, a tag saying "turn me": what `check` must point out)."""
    from PIL import Image

    source = reference_set(ReferenceSetConfig(n_marked=N_PHOTOS - 1, n_clean=1, seed=1000), root / "generated")
    data = root / "photos"
    data.mkdir()
    with open(source / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:N_PHOTOS]
    out = []
    for i, row in enumerate(rows):
        name = f"photo_{i}.jpg"
        if i == 0:
            image = Image.open(source / row["file"])
            exif = image.getexif()
            exif[0x0112] = 6  # "rotate 90° to view": what a phone writes instead of turning the pixels
            image.save(data / name, exif=exif, quality=95)
        else:
            shutil.copy(source / row["file"], data / name)
        out.append({"id": f"team_{i}", "file": name, "secret": row["secret"]})
    with open(data / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "file", "secret"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(out)
    return data


def _official_checkpoints(folder: Path) -> dict[str, Path]:
    from harness.models.registry import create_model

    folder.mkdir()
    torch.manual_seed(0)
    teacher = create_model("team_lraspp").state_dict()
    # HRNet's / PIDNet's train.py: torch.save({"epoch": e, "state_dict": model.state_dict(), ...}) of FullModel,
    # whose state_dict holds the network under `model.` and the loss's class weights under `loss.criterion.weight`
    full = {f"model.{k}": v for k, v in teacher.items()} | {"loss.criterion.weight": torch.ones(2)}
    torch.save({"epoch": 7, "state_dict": full, "best_mIoU": 0.5}, folder / "teacher.pth")
    student = create_model("team_lraspp").state_dict()
    degraded = dict(student)
    for key in ("net.classifier.low_classifier.bias", "net.classifier.high_classifier.bias"):
        student[key] = torch.full_like(student[key], 50.0)  # the whole view as the label: an ROI every time
        degraded[key] = torch.full_like(degraded[key], -50.0)  # an empty mask every time: no bits read
    torch.save({"epoch": 3, "model": student}, folder / "student.pth")
    torch.save({"epoch": 3, "model": degraded}, folder / "student_degraded.pth")
    torch.save({f"module.{k}": v for k, v in create_model("team_sdecoder").state_dict().items()},
               folder / "sdecoder.pth")
    pidnet = create_model("pidnet_s", augment=True).state_dict()  # with the auxiliary heads seghead_p, seghead_d
    torch.save({"epoch": 1, "state_dict": {f"model.{k}": v for k, v in pidnet.items()}
                | {"sem_loss.criterion.weight": torch.ones(19)}}, folder / "pidnet_augment.pth")
    # an mmpose Lite-HRNet-style file: the backbone under `backbone.`, a keypoint head, none of our 1×1 head
    small = create_model("hrnet_w18_small_v1").state_dict()
    pose = {f"backbone.{k}": v for k, v in small.items() if not k.startswith("last_layer")}
    pose["keypoint_head.final_layer.weight"] = torch.zeros(17, 16, 1, 1)
    torch.save({"meta": {"epoch": 210}, "state_dict": pose}, folder / "pose_backbone.pth")
    return {name: folder / f"{name}.pth" for name in
            ("teacher", "student", "student_degraded", "sdecoder", "pidnet_augment", "pose_backbone")}


# ------------------------------------------------------------------------------------------------- the data


def test_check_warns_about_missing_masks_exif_and_misspelt_columns(world, tmp_path, capsys):
    from harness.data.__main__ import main

    assert main(["check", str(world["data"])]) == 0
    out = capsys.readouterr().out
    assert "warning: no photo has a ground-truth mask" in out and "oracle ROI" in out and "IoU" in out
    assert "EXIF orientation" in out and "team_0 (orientation 6)" in out and "--exif-transpose" in out
    # a misspelt optional column is named with the column it probably meant
    misspelt = tmp_path / "misspelt"
    shutil.copytree(world["data"], misspelt)
    text = (misspelt / "manifest.csv").read_text().splitlines()
    (misspelt / "manifest.csv").write_text("\n".join([text[0] + ",maskfile"] + [t + "," for t in text[1:]]) + "\n")
    assert main(["check", str(misspelt)]) == 0
    assert "column 'maskfile' is not a manifest column and is ignored; did you mean 'mask_file'?" in \
        capsys.readouterr().out


# ------------------------------------------------------------------------------------------ the checkpoints


def test_official_checkpoints_load_with_notes(world, capsys):
    from harness.models import CheckpointError, build_localizer, build_sdecoder

    build_localizer("team_lraspp", INPUT, world["teacher"])
    assert "dropped training-wrapper entries that are not part of the network: loss.criterion.weight" in \
        capsys.readouterr().err
    build_sdecoder("team_sdecoder", world["sdecoder"])
    # PIDNet trained with augment=True: the auxiliary heads are recognised, not loaded, never run
    model = build_localizer("pidnet_s", INPUT, world["pidnet_augment"])
    err = capsys.readouterr().err
    assert "auxiliary training heads seghead_d, seghead_p" in err and "sem_loss.criterion.weight" in err
    assert not hasattr(model.backbone, "seghead_p")
    aug = build_localizer("pidnet_s", INPUT, world["pidnet_augment"], augment=True).eval()
    assert model.eval()(torch.rand(1, 3, INPUT, INPUT)).shape[:2] == aug(torch.rand(1, 3, INPUT, INPUT)).shape[:2]
    # backbone only: an explicit opt-in that says what it loaded and what it left at initialisation
    with pytest.raises(CheckpointError, match="missing keys"):
        build_localizer("hrnet_w18_small_v1", INPUT, world["pose_backbone"])
    build_localizer("hrnet_w18_small_v1", INPUT, world["pose_backbone"], backbone_only=True)
    err = capsys.readouterr().err
    assert "backbone-only load" in err
    assert "left at initialisation (8 tensors): last_layer.0.*, last_layer.1.*, last_layer.3.*" in err
    assert "keypoint_head.final_layer.*" in err


def test_options_are_checked_before_anything_runs(world):
    from harness.run.options import eval_config

    base = {"data": str(world["data"]), "sdecoder": f"team_sdecoder={world['sdecoder']}",
            "input_size": [f"team_lraspp={INPUT}"]}
    cfg = eval_config({**base, "localizer": [f"pid:pidnet_s={world['pidnet_augment']}", "t:team_lraspp"],
                       "model_option": ["pid:augment=true"],
                       "backbone_only": [], "plugin": [PLUGIN], "exif_transpose": True})
    assert cfg.localizers[0].options == (("augment", True),) and cfg.plugins == (PLUGIN,) and cfg.exif_transpose
    cfg.localizers[0].build()  # augment=True: the file loads strictly, heads and all
    with pytest.raises(ValueError, match=r"has no option 'augmnt'; its options: num_classes, augment"):
        eval_config({**base, "localizer": ["pid:pidnet_s"], "model_option": ["pid:augmnt=true"]})
    with pytest.raises(ValueError, match=r"augment='yes': expected a bool"):
        eval_config({**base, "localizer": ["pid:pidnet_s"], "model_option": ["pidnet_s:augment=yes"]})
    with pytest.raises(ValueError, match="no model has that label"):
        eval_config({**base, "localizer": ["pid:pidnet_s"], "model_option": ["other:augment=true"]})
    # module:factory read as LABEL:NAME: both readings shown
    with pytest.raises(ValueError, match=rf"reads as LABEL '{PLUGIN}' : NAME 'make_lraspp'.*--plugin {PLUGIN}"):
        eval_config({**base, "localizer": [f"{PLUGIN}:make_lraspp={world['teacher']}"]})


# --------------------------------------------------------------------------------------------- end to end


def _suites(world, results: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(world["plugins"]), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "pytest", "suites", "-q", "-p", "no:cacheprovider", "--plugin", PLUGIN,
           "--data", str(world["data"]), "--tilts", "0", "--bn-mode", "demo", "--results-dir", str(results),
           "--localizer", f"teacher:team_lraspp={world['teacher']}",
           "--localizer", f"student:team_lraspp={world['student']}",
           "--sdecoder", f"team_sdecoder={world['sdecoder']}", "--input-size", f"team_lraspp={INPUT}",
           # the project's own field models (HRNet-W48 ...) are not the team's: counting them is the slow part
           "-k", "not test_field_model_cost", *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _eval(world, out: Path, *localizers: str) -> int:
    from harness.eval import main

    argv = ["--plugin", PLUGIN, "--data", str(world["data"]), "--tilts", "0", "--bn-mode", "demo", "--mode", "quick",
            "--workers", "0", "--quiet", "--sdecoder", f"team_sdecoder={world['sdecoder']}",
            "--input-size", f"team_lraspp={INPUT}", "--out", str(out)]
    for spec in localizers:
        argv += ["--localizer", spec]
    return main(argv)


@pytest.mark.slow
def test_a_teams_world_through_suites_report_and_gate(world, tmp_path, capsys):
    results = tmp_path / "results"
    run = _suites(world, results)
    assert "views (4 photos)" in run.stderr, "the evaluation's progress bar did not reach the terminal"
    quick = results / "quick"
    run_json = (quick / "robustness" / "run.json").read_text()
    assert PLUGIN in run_json and "sha256" in run_json, "the plug-in is not in the run's identity"
    for name in ("cost.json", "latency.json", "robustness/records.csv", "robustness/summary.json"):
        assert (quick / name).is_file(), name

    # the report and the gate: the other engineer's interface (`--results DIR --out DIR`; the gate's exit codes)
    from harness.gate import main as gate
    from harness.report import main as report

    assert report(["--results", str(quick), "--out", str(tmp_path / "report")]) == 0, \
        "report --results DIR --out DIR on a team's world (report engineer's part)"
    assert "teacher" in (tmp_path / "report" / "REPORT.md").read_text()
    baseline = tmp_path / "baseline.json"
    assert gate(["--results", str(quick), "--baseline", str(baseline), "--update"]) == 0, "gate --update"
    assert gate(["--results", str(quick), "--baseline", str(baseline)]) == 0, \
        f"the gate on the run it was made from must pass:\n{capsys.readouterr().out}"

    degraded = tmp_path / "degraded"
    assert _eval(world, degraded, f"teacher:team_lraspp={world['teacher']}",
                 f"student:team_lraspp={world['student_degraded']}") == 0
    assert gate(["--results", str(degraded), "--baseline", str(baseline)]) == 1, \
        f"a degraded student must fail the gate (exit 1):\n{capsys.readouterr().out}"

    newcomer = tmp_path / "newcomer"
    assert _eval(world, newcomer, f"teacher:team_lraspp={world['teacher']}", f"student:team_lraspp={world['student']}",
                 f"newcomer:team_lraspp={world['student']}") == 0
    assert gate(["--results", str(newcomer), "--baseline", str(baseline)]) == 1, \
        "a model the baseline does not know must fail the gate without --allow-new (exit 1)"
    assert gate(["--results", str(newcomer), "--baseline", str(baseline), "--allow-new"]) == 0, "--allow-new"

    truncated = tmp_path / "truncated"
    shutil.copytree(quick, truncated)
    records = truncated / "robustness" / "records.csv"
    lines = records.read_text().splitlines()
    records.write_text("\n".join(lines[:len(lines) // 2]) + "\n")
    # cut at a row boundary: incomplete (exit 1), or records and summary that disagree, unreadable (exit 2)
    assert gate(["--results", str(truncated), "--baseline", str(baseline)]) in (1, 2), \
        "truncated results must fail the gate"

    # last, so the report and the gate above are exercised whatever the suites said: every suite must pass on a
    # world whose photos have no masks. The evaluation writes no oracle rows for them (n/a), so
    # suites/test_suite_robustness.py must expect oracle rows and an "oracle" summary row only for photos with a
    # mask: `settings.reference.n_masked` (DataCounts, user data) is that count; the reference world has masks.
    assert run.returncode == 0, ("the quick suites on a team's world without masks failed (if only the oracle "
                                 "checks of test_suite_robustness.py failed: they must read settings.reference."
                                 f"n_masked, the n/a oracle of the report/gate work):\n{run.stdout[-4000:]}")
