"""A tiny world for the distillation tests: small nets with an HRNet-like `last_layer`, a small secret decoder,
and 64×64 scenes of a bright rectangle on noise. Module-level functions only, so DDP worker processes can import
them."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from harness.data.manifest import secret_to_str, write_manifest
from harness.distill.config import DataConfig, Recipe, ValidationConfig, recipe_from_dict
from harness.distill.data import FixedScenes, Scene
from harness.distill.trainer import Builders
from harness.models import Localizer, load_checkpoint

WIDTHS = {"tiny_student": 4, "tiny_teacher": 6}


class TinyNet(nn.Module):
    """Stem + `last_layer` = (conv, BN, ReLU, conv) as in HRNet, so `backbone.last_layer.3` resolves."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.last_layer = nn.Sequential(nn.Conv2d(width, width, 1), nn.BatchNorm2d(width), nn.ReLU(),
                                        nn.Conv2d(width, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.stem(x))


class TinySDecoder(nn.Module):
    """B×3×400×400 → B×100 logits: strided conv, pooling, linear; weights fixed by the key."""

    def __init__(self, key: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(1000 + key)
        self.conv = nn.Conv2d(3, 4, 8, stride=8)
        self.head = nn.Linear(4 * 16, 100)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)

    def forward(self, roi: torch.Tensor) -> torch.Tensor:
        return self.head(nn.functional.adaptive_avg_pool2d(self.conv(roi), 4).flatten(1))


def tiny_localizer(name: str, input_size: int, ckpt: str | None) -> Localizer:
    net = TinyNet(WIDTHS[name])
    if ckpt:
        load_checkpoint(net, ckpt)
    return Localizer(net, input_size)


def tiny_sdecoder(key: int) -> nn.Module:
    return TinySDecoder(key)


def tiny_scenes(n: int, seed: int, size: int = 64) -> FixedScenes:
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(n):
        photo = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        x0, y0 = rng.integers(4, size // 2, 2)
        w, h = rng.integers(size // 4, size // 2, 2)
        photo[y0:y0 + h, x0:x0 + w] = rng.integers(150, 255, 3, dtype=np.uint8)
        mask[y0:y0 + h, x0:x0 + w] = 255
        secret = rng.integers(0, 2, 100, dtype=np.uint8)
        scenes.append(Scene(Image.fromarray(photo), Image.fromarray(mask, "L"), secret))
    return FixedScenes(scenes)


def train_scenes(cfg: DataConfig) -> FixedScenes:
    return tiny_scenes(cfg.synth_size, cfg.synth_seed, cfg.image_size)


def write_scenes(root: Path, scenes: FixedScenes) -> Path:
    """The scenes as a dataset folder (PNG photos and masks, manifest.csv)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, scene in enumerate(scenes.scenes):
        scene.photo.save(root / f"img_{i}.png")
        scene.mask.save(root / f"mask_{i}.png")
        rows.append({"id": f"img_{i}", "file": f"img_{i}.png", "secret": secret_to_str(scene.secret),
                     "mask_file": f"mask_{i}.png"})
    write_manifest(root, rows)
    return root


def val_set(cfg: ValidationConfig, data: DataConfig, run_dir: Path) -> Path:
    return write_scenes(run_dir / "val_set", tiny_scenes(cfg.size, cfg.synth_seed, data.image_size))


BUILDERS = Builders(localizer=tiny_localizer, sdecoder=tiny_sdecoder, train_scenes=train_scenes, val_set=val_set)

SEED_DISTILLER: dict[str, Any] = {
    "type": "ConfigurableDistiller",
    "student_recorders": {"logits": {"type": "ModuleOutputs", "source": "backbone.last_layer.3"}},
    "teacher_recorders": {"logits": {"type": "ModuleOutputs", "source": "backbone.last_layer.3"}},
    "distill_losses": {"loss_l2": {"type": "L2Loss", "loss_weight": 10.0}},
    "loss_forward_mappings": {"loss_l2": {
        "s_feature": {"from_student": True, "recorder": "logits"},
        "t_feature": {"from_student": False, "recorder": "logits"},
    }},
}


def tiny_recipe(max_steps: int = 4, teacher_ckpt: str | None = None, **sections: dict[str, Any]) -> Recipe:
    """A recipe for the tiny world; `sections` override tables (merged key by key)."""
    raw: dict[str, Any] = {
        "run": {"seed": 3, "max_steps": max_steps, "log_every": 1, "val_every": 2, "ckpt_every": 1, "threads": 1},
        "model": {"name": "tiny_student", "input_size": 32},
        "data": {"source": "synth", "synth_size": 6, "synth_seed": 5, "image_size": 64, "batch_size": 2,
                 "num_workers": 0, "tilt_deg": 5.0},
        "optim": {"name": "adamw", "lr": 0.01},
        "schedule": {"warmup_steps": 1},
        "validation": {"size": 2, "batch_size": 2, "synth_seed": 9},
    }
    if teacher_ckpt is not None:
        raw["teacher"] = {"name": "tiny_teacher", "input_size": 32, "ckpt": teacher_ckpt}
        raw["distiller"] = SEED_DISTILLER
    for name, table in sections.items():
        raw[name] = {**raw.get(name, {}), **table} if isinstance(table, dict) and name != "distiller" else table
    return recipe_from_dict(raw, "<tiny recipe>")


def save_teacher(path: str, seed: int = 11) -> str:
    torch.manual_seed(seed)
    net = TinyNet(WIDTHS["tiny_teacher"])
    net.train()
    with torch.no_grad():  # a few forwards give the BatchNorm layers non-default statistics
        for _ in range(3):
            net(torch.rand(4, 3, 32, 32))
    torch.save(net.state_dict(), path)
    return path


def ddp_worker(rank: int, world_size: int, port: int, out_dir: str, teacher_ckpt: str) -> None:
    """One process of a gloo run (torch.multiprocessing.spawn target): trains, then saves its student's weights."""
    import os

    import torch.distributed as dist

    from harness.distill.checkpoint import fp32_state_dict
    from harness.distill.trainer import Trainer

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        trainer = Trainer(tiny_recipe(max_steps=3, teacher_ckpt=teacher_ckpt), out_dir, BUILDERS, progress=False)
        trainer.run()
        trainer.close()
        torch.save({"student": fp32_state_dict(trainer.student.backbone), "step": trainer.state.step},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
