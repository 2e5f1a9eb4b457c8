"""A team's models and photos without editing the project: plug-in modules, the entry-point group, model options,
the multi-class head's mask channel, HRNet's align_corners, EXIF orientation, and the "different run" message."""
from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from harness.data import load_dataset
from harness.data.manifest import write_manifest
from harness.models import Localizer, registry
from harness.models.contracts import LocalizerNet, SDecoderNet
from harness.models.registry import create_model, get_entry, load_plugin, plugin_provenance
from harness.pipeline.views import ViewSpec, prepare
from harness.run.evaluate import _differences


def test_a_plugin_registers_on_import_and_is_recorded(tmp_path, monkeypatch):
    (tmp_path / "plugin_world_a.py").write_text(textwrap.dedent('''
        import torch.nn as nn
        from harness.models.registry import register_model

        @register_model("localizer")
        def plugin_a_net(num_classes: int = 1, width: int = 4) -> nn.Module:
            return nn.Conv2d(3, num_classes, 1)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    found = load_plugin("plugin_world_a")
    assert load_plugin("plugin_world_a") is found  # imported once
    assert get_entry("plugin_a_net").kind == "localizer"
    assert found["module"] == "plugin_world_a" and len(found["sha256"]) == 64 and found["version"] is None
    assert found in plugin_provenance()
    assert isinstance(create_model("plugin_a_net"), LocalizerNet)
    assert isinstance(create_model("reference_sdecoder"), SDecoderNet)
    with pytest.raises(ImportError, match="--plugin 'no_such_team_module': cannot import it"):
        load_plugin("no_such_team_module")


def test_an_installed_package_registers_through_the_entry_point_group(tmp_path, monkeypatch):
    (tmp_path / "plugin_world_b.py").write_text(textwrap.dedent('''
        import torch.nn as nn
        from harness.models.registry import register_model

        @register_model("sdecoder")
        def plugin_b_decoder() -> nn.Module:
            return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 100))
    '''))
    info = tmp_path / "team_models_b-2.3.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: team-models-b\nVersion: 2.3.1\n")
    (info / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\nteam = plugin_world_b\n")
    (info / "top_level.txt").write_text("plugin_world_b\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_ENTRY_POINTS_LOADED", False)
    assert "plugin_b_decoder" in registry.list_models("sdecoder")  # no flag: the group is read on the first look-up
    found = next(p for p in plugin_provenance() if p["module"] == "plugin_world_b")
    assert found["version"] == "2.3.1" and found["source"] == "entry point team"


def test_mask_channel_reads_one_channel_of_a_multi_class_head():
    net = nn.Conv2d(3, 19, 1)
    x = torch.rand(2, 3, 32, 32)
    out = Localizer(net, mask_channel=3)(x)
    full = net((x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225])
               .view(1, 3, 1, 1))
    assert out.shape == (2, 1, 32, 32) and torch.allclose(out, full[:, 3:4], atol=1e-6)
    with pytest.raises(ValueError, match="mask_channel=K"):
        Localizer(net)(x)


def test_hrnet_align_corners_is_a_recorded_option_defaulting_to_the_official_false():
    assert get_entry("hrnet_w18_small_v1").resolved_options() == {"num_classes": 1, "align_corners": False}
    torch.manual_seed(0)
    plain = create_model("hrnet_w18_small_v1").eval()
    ocr = create_model("hrnet_w18_small_v1", align_corners=True).eval()
    ocr.load_state_dict(plain.state_dict())
    for m in plain.modules():  # an initialisation that makes the low-resolution branches matter
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.1)
    ocr.load_state_dict(plain.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(plain(x), ocr(x))


def test_exif_transpose_turns_the_photo_and_its_mask_upright(tmp_path):
    rng = np.random.default_rng(0)
    stored = Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))
    mask = np.zeros((300, 400), np.uint8)
    mask[50:150, 100:300] = 255
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(tmp_path / "tagged.png", exif=exif)
    Image.fromarray(mask).save(tmp_path / "tagged_mask.png")
    stored.transpose(Image.Transpose.ROTATE_270).save(tmp_path / "upright.png")
    Image.fromarray(mask).transpose(Image.Transpose.ROTATE_270).save(tmp_path / "upright_mask.png")
    write_manifest(tmp_path, [{"id": n, "file": f"{n}.png", "secret": "", "mask_file": f"{n}_mask.png"}
                              for n in ("tagged", "upright")])
    tagged, upright = load_dataset(tmp_path)
    spec = ViewSpec((0.0,), exif_transpose=True)
    a, b = prepare(tagged, 0, spec), prepare(upright, 1, spec)
    assert np.array_equal(a.pixels, b.pixels) and np.array_equal(a.gt_masks, b.gt_masks)
    as_stored = prepare(tagged, 0, ViewSpec((0.0,)))  # the default: read as stored, as decoder2
    assert not np.array_equal(as_stored.pixels, b.pixels)


def test_a_different_run_names_the_settings_that_differ():
    old = {"config": {"tilts": [0.0, 2.0], "bn_mode": "eval", "localizers": [{"arch": "a"}]}, "checkpoints": {"t": "1"}}
    new = {"config": {"tilts": (0.0,), "bn_mode": "eval", "localizers": [{"arch": "a"}]}, "checkpoints": {"t": "2"},
           "plugins": []}
    text = _differences(json.dumps(old), new)
    assert "config.tilts: [0.0, 2.0] → [0.0]" in text and 'checkpoints.t: "1" → "2"' in text
    assert 'plugins: "(absent)" → []' in text and "bn_mode" not in text

