"""Dataset format: validation faults name their row, conversions are recorded, the check CLI's exit codes."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.data import DatasetError, dataset_hash, load_dataset, load_image
from harness.data.__main__ import main as data_main

SECRET_A = "01" * 50
SECRET_B = "1100" * 25
QUAD = "10 10 70 12 68 70 12 68"


def _photo(size=(80, 80), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def _mask(size=(80, 80)) -> Image.Image:
    mask = np.zeros((size[1], size[0]), np.uint8)
    mask[10:70, 10:70] = 255
    return Image.fromarray(mask, "L")


COLUMNS = ("id", "file", "secret", "mask_file", "quad", "tilt_deg", "kind")


def _write(root: Path, rows: list[dict[str, str]], columns=COLUMNS):
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    """Three valid samples: watermarked with mask and quad, watermarked plain, clean."""
    _photo(seed=1).save(tmp_path / "a.png")
    _photo(seed=2).save(tmp_path / "b.jpg", quality=95)
    _photo(seed=3).save(tmp_path / "c.png")
    _mask().save(tmp_path / "a_mask.png")
    _write(tmp_path, [
        {"id": "a", "file": "a.png", "secret": SECRET_A, "mask_file": "a_mask.png", "quad": QUAD, "tilt_deg": "1.5",
         "kind": "random"},
        {"id": "b", "file": "b.jpg", "secret": SECRET_B, "kind": "random"},
        {"id": "c", "file": "c.png", "secret": "", "kind": "clean"},
    ])
    return tmp_path


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _faults(root: Path, decode: bool = False) -> list[str]:
    with pytest.raises(DatasetError) as caught:
        load_dataset(root, decode=decode)
    return [str(fault) for fault in caught.value.faults]


def _set(root: Path, row_index: int, **values: str) -> None:
    rows = _rows(root)
    rows[row_index].update(values)
    _write(root, rows)


def test_valid_dataset_loads(dataset_dir: Path):
    dataset = load_dataset(dataset_dir)
    assert len(dataset) == 3 and dataset.root == dataset_dir
    a, b, c = dataset
    assert a.secret.dtype == np.uint8 and a.secret.shape == (100,)
    assert "".join(map(str, a.secret)) == SECRET_A
    assert c.secret is None and not c.watermarked
    assert a.quad.shape == (4, 2) and a.quad[2].tolist() == [68.0, 70.0]
    assert a.mask_path == dataset_dir / "a_mask.png" and b.mask_path is None
    assert a.tilt_deg == 1.5 and b.tilt_deg is None
    assert a.size == (80, 80) and a.line == 2 and c.line == 4
    assert dataset.conversions == {}
    assert dataset.by_id("b") is b
    assert dataset.kinds() == {"random": 2, "clean": 1}


@pytest.mark.parametrize("row, values, expected", [
    (1, {"secret": SECRET_A[:99]}, "line 3, id 'b': secret has 99 characters, expected 100"),
    (1, {"secret": SECRET_A[:99] + "2"}, "line 3, id 'b': secret holds characters other than 0/1: '2'"),
    (0, {"file": "missing.png"}, "line 2, id 'a': file 'missing.png' not found"),
    (0, {"file": ""}, "line 2, id 'a': file is empty"),
    (0, {"file": "../a.png"}, "line 2, id 'a': file '../a.png' must be a path relative to the dataset folder"),
    (2, {"id": ""}, "line 4: id is empty"),
    (2, {"id": "a"}, "line 4, id 'a': duplicate id (first on line 2)"),
    (0, {"quad": "1 2 3 4 5 6 7"}, "line 2, id 'a': quad has 7 numbers, expected 8"),
    (0, {"quad": "1 2 3 4 5 6 7 x"}, "line 2, id 'a': quad holds a value that is not a number"),
    (0, {"quad": "10 10 90 12 68 70 12 68"}, "line 2, id 'a': quad corner 1 lies outside the 80×80 photo"),
    (0, {"quad": "10 10 12 68 68 70 70 12"}, "line 2, id 'a': quad is not a convex quadrilateral listed clockwise"),
    (0, {"tilt_deg": "left"}, "line 2, id 'a': tilt_deg 'left' is not a number"),
    (0, {"mask_file": "nowhere.png"}, "line 2, id 'a': mask_file 'nowhere.png' not found"),
])
def test_each_fault_names_its_row(dataset_dir: Path, row: int, values: dict, expected: str):
    _set(dataset_dir, row, **values)
    faults = _faults(dataset_dir)
    assert any(fault.startswith(expected) for fault in faults), faults


def test_missing_manifest(tmp_path: Path):
    assert _faults(tmp_path) == [f"manifest.csv not found in {tmp_path}"]


def test_missing_columns(dataset_dir: Path):
    _write(dataset_dir, _rows(dataset_dir), columns=("id", "file"))
    (fault,) = _faults(dataset_dir)
    assert fault.startswith("line 1: manifest.csv lacks column(s) secret")


def test_empty_manifest(dataset_dir: Path):
    _write(dataset_dir, [])
    assert _faults(dataset_dir) == ["manifest.csv has no samples"]


def test_garbage_is_refused_from_its_header(dataset_dir: Path):
    (dataset_dir / "c.png").write_bytes(b"not an image at all")
    for decode in (False, True):
        (fault,) = _faults(dataset_dir, decode=decode)
        assert fault.startswith("line 4, id 'c': file 'c.png' cannot be decoded")


def test_truncated_photo_is_a_fault_only_when_decoding(dataset_dir: Path):
    # headers only (the evaluator): the photo passes and its run records it as failed; decode=True refuses it
    data = (dataset_dir / "b.jpg").read_bytes()
    (dataset_dir / "b.jpg").write_bytes(data[: len(data) // 2])
    assert load_dataset(dataset_dir).by_id("b").size == Image.open(dataset_dir / "a.png").size
    (fault,) = _faults(dataset_dir, decode=True)
    assert fault.startswith("line 3, id 'b': file 'b.jpg' cannot be decoded") and "truncated" in fault
    assert data_main(["check", str(dataset_dir)]) == 2


def test_too_small_image(dataset_dir: Path):
    _photo(size=(200, 40)).save(dataset_dir / "c.png")
    (fault,) = _faults(dataset_dir)
    assert fault == "line 4, id 'c': file 'c.png' is 200×40, smaller than 64 px on a side"


@pytest.mark.parametrize("mask, expected", [
    (Image.new("L", (60, 80)), "is 60×80, the photo is 80×80"),
    (Image.new("RGB", (80, 80)), "has mode RGB, expected a single-channel 0/255 image"),
    (Image.new("L", (80, 80), 128), "holds values other than 0 and 255 (e.g. 128)"),
])
def test_bad_mask(dataset_dir: Path, mask: Image.Image, expected: str):
    mask.save(dataset_dir / "a_mask.png")
    (fault,) = _faults(dataset_dir)
    assert fault == f"line 2, id 'a': mask_file 'a_mask.png' {expected}"


def test_every_fault_is_listed_at_once(dataset_dir: Path):
    _set(dataset_dir, 0, secret="0")
    _set(dataset_dir, 2, file="gone.png", quad="1 2 3")
    faults = _faults(dataset_dir)
    assert [f.split(":")[0] for f in faults] == ["line 2, id 'a'", "line 4, id 'c'"]


@pytest.mark.parametrize("mode, array, conversion", [
    ("L", np.full((70, 70), 100, np.uint8), "L→RGB"),
    ("RGBA", np.full((70, 70, 4), 100, np.uint8), "RGBA→RGB"),
    ("I;16", np.full((70, 70), 100 * 257, np.uint16), "→RGB (16-bit scaled to 8)"),
])
def test_conversions_are_recorded_not_faults(dataset_dir: Path, mode: str, array: np.ndarray, conversion: str):
    Image.fromarray(array).save(dataset_dir / "c.png")
    dataset = load_dataset(dataset_dir)
    assert set(dataset.conversions) == {"c"} and dataset.conversions["c"].endswith(conversion)
    assert load_dataset(dataset_dir, decode=True).conversions == dataset.conversions  # header note = decoded note
    assert dataset.by_id("c").conversion == dataset.conversions["c"]
    image = load_image(dataset_dir / "c.png")
    assert image.mode == "RGB" and np.asarray(image).tolist() == np.full((70, 70, 3), 100).tolist()


def test_palette_image_converts(dataset_dir: Path):
    _photo(size=(70, 70)).convert("P").save(dataset_dir / "c.png")
    assert load_dataset(dataset_dir).conversions == {"c": "P→RGB"}
    assert load_image(dataset_dir / "c.png").mode == "RGB"


def test_dataset_hash_covers_manifest_and_files(dataset_dir: Path):
    first = dataset_hash(dataset_dir)
    assert first == dataset_hash(dataset_dir) and len(first) == 64
    mask = np.asarray(_mask()).copy()
    mask[0, 0] = 255
    Image.fromarray(mask).save(dataset_dir / "a_mask.png")
    second = dataset_hash(dataset_dir)
    assert second != first
    _set(dataset_dir, 2, kind="other")
    assert dataset_hash(dataset_dir) != second


def test_check_cli_summary_and_exit_codes(dataset_dir: Path, capsys):
    assert data_main(["check", str(dataset_dir)]) == 0
    out = capsys.readouterr().out
    assert "samples      3" in out and "watermarked  2   clean 1" in out
    assert dataset_hash(dataset_dir) in out
    _set(dataset_dir, 1, secret="101")
    assert data_main(["check", str(dataset_dir)]) == 2
    err = capsys.readouterr().err
    assert "1 fault(s)" in err and "line 3, id 'b': secret has 3 characters" in err


def test_check_cli_as_module(dataset_dir: Path):
    (dataset_dir / "a.png").unlink()
    result = subprocess.run([sys.executable, "-m", "harness.data", "check", str(dataset_dir)],
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 2
    assert "line 2, id 'a': file 'a.png' not found" in result.stderr
