"""The scene generator: determinism, a valid manifest, masks agreeing with quads, label size and tilt."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

import harness.data.synth as synth
from harness.data import dataset_hash, load_dataset
from harness.data.__main__ import main as data_main
from harness.data.content import same_scene, source_images
from harness.data.synth import (
    IN_PLACE,
    SynthConfig,
    background_source,
    generate,
    is_in_place,
    make_scene,
    scene_sources,
)

REAL_WATERMARK = synth.watermark


@pytest.fixture(autouse=True)
def stand_in_codec(monkeypatch):
    """The generator is under test here, not the codec: an identity stand-in keeps these tests fast."""
    monkeypatch.setattr(synth, "watermark", lambda label, bits, key: label)
    monkeypatch.setattr(synth, "codec_fingerprint", lambda: "stand-in")


def _file_hashes(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}


def _quad_mask(quad: np.ndarray, size: int) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in quad], fill=255)
    return np.asarray(canvas) > 0


def test_same_seed_same_bytes(tmp_path: Path):
    cfg = SynthConfig(kind="random", n=4, seed=7)
    first, second = generate(cfg, tmp_path / "one"), generate(cfg, tmp_path / "two")
    assert _file_hashes(first) == _file_hashes(second)
    assert dataset_hash(first) == dataset_hash(second)
    other = generate(SynthConfig(kind="random", n=4, seed=8), tmp_path / "three")
    assert _file_hashes(other)["img_00000.jpg"] != _file_hashes(first)["img_00000.jpg"]


def test_any_scene_regenerates_alone(tmp_path: Path):
    cfg = SynthConfig(kind="fixed", n=4, seed=1)
    root = generate(cfg, tmp_path)
    scene = make_scene(cfg, 3)
    assert (root / "img_00003.jpg").read_bytes() == scene.jpeg
    assert np.array_equal(np.asarray(Image.open(root / "mask_00003.png")), scene.mask)
    assert np.array_equal(np.asarray(Image.open(root / "img_00003.jpg").convert("RGB")), scene.photo)


@pytest.mark.parametrize("kind", ["clean", "fixed", "random"])
def test_manifest_is_valid(tmp_path: Path, kind: str):
    cfg = SynthConfig(kind=kind, n=4, seed=2)
    dataset = load_dataset(generate(cfg, tmp_path))
    assert len(dataset) == 4 and dataset.kinds() == {kind: 4}
    assert all(s.mask_path is not None and s.quad is not None and s.size == (400, 400) for s in dataset)
    secrets = {None if s.secret is None else s.secret.tobytes() for s in dataset}
    assert len(secrets) == {"clean": 1, "fixed": 1, "random": 4}[kind]
    assert (None in secrets) == (kind == "clean")
    for sample, index in zip(dataset, range(4)):
        scene = make_scene(cfg, index)
        assert sample.tilt_deg == scene.tilt_deg
        np.testing.assert_allclose(sample.quad, scene.quad, atol=0.005)
        if scene.secret is not None:
            assert np.array_equal(sample.secret, scene.secret)


def test_watermark_is_embedded_with_the_scene_secret_and_key(monkeypatch):
    calls = []
    monkeypatch.setattr(synth, "watermark", lambda label, bits, key: calls.append((bits, key)) or label)
    scene = make_scene(SynthConfig(kind="random", n=2, seed=4, key=11), 1)
    assert len(calls) == 1 and np.array_equal(calls[0][0], scene.secret) and calls[0][1] == 11
    assert make_scene(SynthConfig(kind="clean", n=2, seed=4), 1).secret is None and len(calls) == 1


def test_with_the_reference_codec(monkeypatch):
    pytest.importorskip("harness.codec")
    monkeypatch.setattr(synth, "watermark", REAL_WATERMARK)
    cfg = SynthConfig(kind="fixed", n=1, seed=6, background=False)
    secret = synth.fixed_secret(cfg.seed)
    marked, plain = synth.make_label(cfg, 0, secret), synth.make_label(cfg, 0, None)
    assert marked.shape == plain.shape == (400, 400, 3) and marked.dtype == np.uint8
    assert np.abs(marked.astype(int) - plain).mean() > 0.1


def test_mask_agrees_with_quad_and_label_size():
    cfg = SynthConfig(kind="random", n=6, seed=5)
    for index in range(cfg.n):
        scene = make_scene(cfg, index)
        assert scene.photo.shape == (400, 400, 3) and scene.photo.dtype == np.uint8
        assert set(np.unique(scene.mask).tolist()) == {0, 255}
        mask, polygon = scene.mask > 0, _quad_mask(scene.quad, 400)
        iou = (mask & polygon).sum() / (mask | polygon).sum()
        assert iou > 0.95, (index, iou)
        assert 0.45 <= scene.label_fraction <= 0.80
        assert 0.45 * 0.95 <= np.sqrt(mask.mean()) <= 0.80 * 1.05
        assert (scene.quad >= 0).all() and (scene.quad <= 400).all()
        assert abs(scene.tilt_deg) <= cfg.tilt_range and 75 <= scene.jpeg_quality <= 95


def test_tilt_sense_and_zero_range():
    # Positive tilt turns the label counter-clockwise on screen: its top edge rises to the right.
    cfg = SynthConfig(kind="clean", n=1, seed=0, perspective=0.0, tilt_range=5.0)
    scenes = [make_scene(cfg, i) for i in range(6)]
    for scene in scenes:
        rise = scene.quad[0, 1] - scene.quad[1, 1]
        assert np.sign(rise) == np.sign(scene.tilt_deg)
        assert np.isclose(np.degrees(np.arctan2(rise, scene.quad[1, 0] - scene.quad[0, 0])), scene.tilt_deg, atol=0.01)
    flat = SynthConfig(kind="clean", n=1, seed=0, tilt_range=0.0)
    assert all(make_scene(flat, i).tilt_deg == 0.0 for i in range(3))


def test_without_background_the_label_fills_the_frame():
    with_bg = SynthConfig(kind="random", n=2, seed=9)
    alone = SynthConfig(kind="random", n=2, seed=9, background=False)
    scene = make_scene(alone, 0)
    assert (scene.mask == 255).all() and scene.tilt_deg == 0.0
    assert scene.quad.tolist() == [[0, 0], [400, 0], [400, 400], [0, 400]]
    assert np.array_equal(scene.secret, make_scene(with_bg, 0).secret)  # same streams, same secret
    assert alone.set_kind == "random_nobg"


def test_same_source_scenes_cut_their_background_from_the_labels_image():
    world = SynthConfig(kind="random", n=40, seed=11)
    hard = SynthConfig(kind="random", n=40, seed=11, same_source=0.5)
    drawn = [i for i in range(40) if background_source(hard, i) is not None]
    assert 10 <= len(drawn) <= 30  # Binomial(40, 0.5): outside this range about once in 600 seeds
    assert all(background_source(world, i) is None for i in range(40))
    same, free = drawn[0], next(i for i in range(40) if i not in drawn)
    found = scene_sources(hard, same)
    assert found.background == (found.label,) and found.same_scene
    assert source_images()[background_source(hard, same)][0] == found.label
    assert scene_sources(world, same).label == found.label  # the label's own stream is untouched
    # Every other scene, and the label, secret and geometry of a drawn one, keep the pixels of the world's scene.
    assert make_scene(hard, free).jpeg == make_scene(world, free).jpeg
    chosen, plain = make_scene(hard, same), make_scene(world, same)
    assert np.array_equal(chosen.mask, plain.mask) and np.array_equal(chosen.secret, plain.secret)
    assert not np.array_equal(chosen.photo, plain.photo)
    assert all(background_source(SynthConfig(n=8, seed=11, same_source=1.0), i) is not None for i in range(8))


def test_a_clean_set_of_the_same_seed_is_the_unwatermarked_twin(monkeypatch):
    marked, twin = SynthConfig(kind="random", n=3, seed=21), SynthConfig(kind="clean", n=3, seed=21)
    for i in range(3):
        a, b = make_scene(marked, i), make_scene(twin, i)
        assert np.array_equal(a.mask, b.mask) and np.array_equal(a.quad, b.quad) and a.tilt_deg == b.tilt_deg
        assert a.jpeg == b.jpeg  # with the codec stood in by the identity, nothing else differs
    monkeypatch.setattr(synth, "watermark", REAL_WATERMARK)
    assert make_scene(marked, 0).jpeg != make_scene(twin, 0).jpeg


def test_in_place_scenes_carry_the_watermark_alone(monkeypatch):
    """The label is the background's own pixels: with the camera off, a scene watermarked in place differs from its
    background only under the mask, and the region reads its secret through the ground-truth box."""
    import torch

    from harness.bench.codec import scene_roi
    from harness.codec import ReferenceSDecoder

    world = SynthConfig(kind="random", n=40, seed=12)
    hard = SynthConfig(kind="random", n=40, seed=12, in_place=0.5)
    drawn = [i for i in range(40) if is_in_place(hard, i)]
    assert 10 <= len(drawn) <= 30  # Binomial(40, 0.5): outside this range about once in 600 seeds
    free = next(i for i in range(40) if i not in drawn)
    assert make_scene(hard, free).jpeg == make_scene(world, free).jpeg  # other scenes keep their pixels
    assert not any(is_in_place(SynthConfig(kind="clean", n=40, seed=12, in_place=1.0), i) for i in range(40))
    found = scene_sources(hard, drawn[0])
    assert found.label == IN_PLACE and found.same_scene
    assert found.background == scene_sources(world, drawn[0]).background

    monkeypatch.setattr(synth, "camera", lambda photo, cfg, rng: (_png_bytes(photo), 100))
    monkeypatch.setattr(synth, "watermark", REAL_WATERMARK)
    decode = torch.no_grad()(ReferenceSDecoder(key=0))
    for index in drawn[:2]:
        scene = make_scene(hard, index)
        scenery = synth.background(synth.scene_rng(hard, index, synth._BACKGROUND), hard.size)
        changed = np.abs(scene.photo.astype(int) - scenery.astype(int)).max(axis=2) > 0
        near_label = ndimage.binary_dilation(scene.mask > 0, iterations=2)  # the mask leaves out the soft edge
        assert changed[scene.mask > 0].mean() > 0.5 and not (changed & ~near_label).any()  # nothing moved outside
        change = (scene.photo.astype(float) - scenery)[scene.mask > 0]
        assert np.sqrt((change**2).mean()) < 8  # a watermark (34 dB on the label), not a new picture
        roi = scene_roi(Image.fromarray(scene.photo), scene.mask > 0, 0.0)
        assert float(((decode(roi)[0] > 0).numpy() == scene.secret).mean()) >= 0.9


def _png_bytes(photo: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="PNG")
    return buffer.getvalue()


def test_synth_cli_generates_then_reuses(tmp_path: Path, capsys):
    out = tmp_path / "set"
    args = ["synth", "--kind", "fixed", "--background", "no", "--n", "2", "--seed", "3", "--out", str(out)]
    assert data_main(args) == 0
    assert "2 fixed_nobg scenes" in capsys.readouterr().out
    assert '"background": false' in (out / "synth.json").read_text()
    before = _file_hashes(out)
    assert data_main(args) == 0 and "already holds this set" in capsys.readouterr().out
    assert data_main(args[:-4] + ["--seed", "4", "--out", str(out)]) == 1  # another set: refused without --force
    assert _file_hashes(out) == before
    assert data_main(args[:-4] + ["--seed", "4", "--out", str(out), "--force"]) == 0
    assert _file_hashes(out) != before and data_main(["check", str(out)]) == 0


def test_synth_cli_records_the_share_of_same_source_scenes(tmp_path: Path):
    out = tmp_path / "hard"
    args = ["synth", "--kind", "random", "--n", "1", "--seed", "3", "--same-source", "0.25", "--out", str(out)]
    assert data_main(args) == 0
    assert '"same_source": 0.25' in (out / "synth.json").read_text()
    assert data_main(args[:-2] + ["--in-place", "0.5", "--out", str(tmp_path / "in_place")]) == 0
    assert '"in_place": 0.5' in (tmp_path / "in_place" / "synth.json").read_text()


def test_sources_cli_names_each_scenes_images_in_manifest_order(tmp_path: Path, capsys):
    out = tmp_path / "heldout"
    assert data_main(["reference", "--n-marked", "3", "--n-clean", "1", "--seed", "5", "--out", str(out)]) == 0
    capsys.readouterr()
    assert data_main(["sources", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "sample_id,label_source,background_sources,same_scene"
    assert [line.split(",")[0] for line in lines[1:]] == [s.id for s in load_dataset(out)]
    cfg = SynthConfig(kind="random", n=3, seed=5, tilt_range=0.0)
    found = scene_sources(cfg, 2)
    assert lines[3] == f"marked/img_00002,{found.label},{' '.join(found.background)},{int(found.same_scene)}"
    (out / "marked" / "synth.json").unlink()
    assert data_main(["sources", str(out)]) == 2
    assert "row 'marked/img_00000' was not made by the scene generator" in capsys.readouterr().err


def test_a_stereo_pair_is_one_scene():
    assert same_scene("motorcycle_left", "motorcycle_right") and same_scene("moon", "moon")
    assert not same_scene("moon", "camera")


def test_reference_cli_combines_watermarked_and_clean_halves(tmp_path: Path, capsys):
    out = tmp_path / "heldout"
    assert data_main(["reference", "--n-marked", "2", "--n-clean", "1", "--out", str(out)]) == 0
    assert "2 watermarked + 1 clean" in capsys.readouterr().out
    dataset = load_dataset(out)
    assert [s.id for s in dataset] == ["marked/img_00000", "marked/img_00001", "clean/img_00000"]
    assert [s.watermarked for s in dataset] == [True, True, False]
    assert data_main(["reference", "--n-marked", "-1", "--out", str(out)]) == 2
    assert "n must be >= 0" in capsys.readouterr().err


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="unknown scene kind 'mixed'"):
        SynthConfig(kind="mixed")
    with pytest.raises(ValueError, match=r"same_source must lie in \[0, 1\], got 1.5"):
        SynthConfig(same_source=1.5)
    with pytest.raises(ValueError, match=r"in_place must lie in \[0, 1\], got -0.1"):
        SynthConfig(in_place=-0.1)
