"""Training data: scenes → fitted, tilted tensors, in DataLoader workers, deterministic per (seed, step).

Every draw is decided up front by `StepBatchSampler` from (seed, step) alone: which scenes a step sees and the tilt
angle of each. Workers only execute that plan, so the batches do not depend on the number of workers, on timing, or
on whether the run was resumed, and DDP ranks take disjoint slices of one global batch.

Photos are fitted to `image_size`² with `ImageOps.fit` (LANCZOS) exactly as decoder2 does before the localizer sees
them; masks get the same crop. The tilt augmentation rotates photo and mask together by an angle drawn uniformly from
[-tilt_deg, tilt_deg] (the camera tilt range of the scenes), corners filled from the edge. Camera conditions of
`harness.conditions` (recipe `[data] conditions`) are applied to photo and mask before the fit, each with a severity
drawn uniformly from its range, decided by the sampler like every other draw.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Iterator, Protocol, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset, Sampler

from harness.core.constants import NUM_BITS
from harness.core.geometry import rotate_tensor
from harness.core.processes import die_with_parent

if TYPE_CHECKING:
    from harness.data.synth import SynthConfig
    from harness.distill.config import ConditionAug



@dataclass(frozen=True, eq=False)
class Scene:
    """One training scene: an RGB photo, its label mask (L, 0/255) when known, its secret bits when watermarked."""

    photo: Image.Image
    mask: Image.Image | None
    secret: np.ndarray | None  # uint8 (100,)


class SceneSource(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Scene: ...


class FolderScenes:
    """Scenes of a dataset folder (manifest.csv + images), validated once by `harness.data.load_dataset`.

    Every photo is decoded at validation: a corrupt photo stops training before the first step, not at step N.
    """

    def __init__(self, root: str):
        from harness.data import load_dataset

        self.root = root
        self.samples = load_dataset(root, decode=True).samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Scene:
        from harness.data import load_image

        sample = self.samples[index]
        mask = Image.open(sample.mask_path).convert("L") if sample.mask_path is not None else None
        return Scene(load_image(sample.path), mask, sample.secret)


class SynthScenes:
    """Scenes made on the fly by `harness.data.synth.make_scene(cfg, index)`, a pure function of its arguments."""

    def __init__(self, cfg: SynthConfig):
        self.cfg = cfg

    def __len__(self) -> int:
        return self.cfg.n

    def __getitem__(self, index: int) -> Scene:
        from harness.data.synth import make_scene

        scene = make_scene(self.cfg, index)
        return Scene(Image.fromarray(scene.photo, "RGB"), Image.fromarray(scene.mask, "L"), scene.secret)


@dataclass(frozen=True)
class Draw:
    """What one sample of one step is: a scene index, a tilt angle, a horizontal flip, and the camera conditions
    (name, severity) applied to its photo and mask before the fit, with the seed of their random draws."""

    index: int
    tilt_deg: float
    hflip: bool
    conditions: tuple[tuple[str, tuple[float, ...]], ...] = ()
    condition_seed: int = 0


class StepBatchSampler(Sampler[list[Draw]]):
    """Batches for steps [start_step, max_steps): epoch-wise permutations of the scenes, tilts from (seed, step).

    The global batch of a step is `batch_size × world_size` positions of the epoch order; rank r takes the r-th
    contiguous slice of it.
    """

    def __init__(self, num_scenes: int, batch_size: int, seed: int, start_step: int, max_steps: int,
                 tilt_deg: float, hflip: bool, rank: int = 0, world_size: int = 1,
                 conditions: Sequence[ConditionAug] = ()):
        if num_scenes <= 0:
            raise ValueError("the training set is empty")
        self.num_scenes, self.batch_size, self.seed = num_scenes, batch_size, seed
        self.start_step, self.max_steps = start_step, max_steps
        self.tilt_deg, self.hflip = tilt_deg, hflip
        self.rank, self.world_size = rank, world_size
        self.conditions = tuple(conditions)

    def __len__(self) -> int:
        return max(0, self.max_steps - self.start_step)

    @lru_cache(maxsize=4)
    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_scenes)

    def draws(self, step: int) -> list[Draw]:
        global_batch = self.batch_size * self.world_size
        positions = step * global_batch + np.arange(global_batch)
        indices = [int(self._order(int(p // self.num_scenes))[p % self.num_scenes]) for p in positions]
        rng = np.random.default_rng([self.seed, step, 7919])
        tilts = (rng.uniform(-self.tilt_deg, self.tilt_deg, global_batch) if self.tilt_deg > 0
                 else np.zeros(global_batch))
        flips = rng.random(global_batch) < 0.5 if self.hflip else np.zeros(global_batch, bool)
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        conditions = self._conditions(step, global_batch)
        return [Draw(i, float(t), bool(f), *c) for i, t, f, c in zip(indices[mine], tilts[mine], flips[mine],
                                                                      conditions[mine])]

    def _conditions(self, step: int, n: int) -> list[tuple]:
        """Per sample of the global batch: the conditions it gets and their seed, from (seed, step) on a stream of
        their own (the scenes, tilts and flips of a recipe without conditions stay as they were). Every draw is
        made whether or not a condition applies, so one condition's probability never moves another's severity."""
        if not self.conditions:
            return [((), 0)] * n
        rng = np.random.default_rng([self.seed, step, 104729])
        out = []
        for _ in range(n):
            chosen = []
            for aug in self.conditions:
                applies = rng.random() < aug.p
                severity = tuple(float(rng.uniform(lo, hi)) for lo, hi in aug.severity)
                if applies:
                    chosen.append((aug.name, severity))
            out.append((tuple(chosen), int(rng.integers(0, 2 ** 31 - 1))))
        return out

    def __iter__(self) -> Iterator[list[Draw]]:
        for step in range(self.start_step, self.max_steps):
            yield self.draws(step)


def fit_scene(scene: Scene, size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Photo → 3×size×size in [0, 1] via ImageOps.fit (LANCZOS); mask → 1×size×size in [0, 1] with the same crop."""
    photo = ImageOps.fit(scene.photo, (size, size), Image.Resampling.LANCZOS)
    image = torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
    if scene.mask is None:
        return image, None
    mask = ImageOps.fit(scene.mask, (size, size), Image.Resampling.BILINEAR)
    return image, torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None]


class TrainSamples(Dataset):
    """Executes a `Draw`: load the scene, fit it, flip and tilt photo and mask together."""

    def __init__(self, scenes: SceneSource, image_size: int):
        self.scenes, self.image_size = scenes, image_size

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, draw: Draw) -> dict[str, torch.Tensor]:
        scene = conditioned(self.scenes[draw.index], draw)
        image, mask = fit_scene(scene, self.image_size)
        has_mask = mask is not None
        mask = mask if has_mask else torch.zeros(1, self.image_size, self.image_size)
        pair = torch.cat([image, mask])[None]
        if draw.hflip:
            pair = pair.flip(-1)
        pair = rotate_tensor(pair, torch.tensor([draw.tilt_deg]))[0]
        secret = scene.secret
        return {
            "image": pair[:3].contiguous(),
            "mask": pair[3:].contiguous(),
            "has_mask": torch.tensor(has_mask),
            "secret": torch.from_numpy(np.asarray(secret, np.float32)) if secret is not None else torch.zeros(NUM_BITS),
            "has_secret": torch.tensor(secret is not None),
            "index": torch.tensor(draw.index),
        }


def conditioned(scene: Scene, draw: Draw) -> Scene:
    """The scene under the draw's camera conditions (harness.conditions, as the evaluation applies them): the photo,
    and the mask through the same geometry (kept where ≥ 128 of 255)."""
    if not draw.conditions:
        return scene
    from harness.conditions import resolve

    photo, mask = scene.photo, scene.mask
    for name, severity in draw.conditions:
        combined = resolve(name)
        bool_mask = np.asarray(mask) >= 128 if mask is not None and combined.geometric else None
        photo, moved = combined.apply(photo, bool_mask, severity, seed=draw.condition_seed, index=draw.index)
        if moved is not None:
            mask = Image.fromarray(np.where(moved, 255, 0).astype(np.uint8), "L")
    return Scene(photo, mask, scene.secret)


def _quiet_worker(parent_pid: int, worker_id: int) -> None:
    torch.set_num_threads(1)  # two cores: a worker must not spawn a thread pool of its own
    die_with_parent(parent_pid, worker_id)  # a killed training leaves no worker making scenes


def make_loader(samples: TrainSamples, sampler: StepBatchSampler, num_workers: int) -> DataLoader:
    return DataLoader(samples, batch_sampler=sampler, num_workers=num_workers,
                      worker_init_fn=partial(_quiet_worker, os.getpid()),
                      persistent_workers=False, prefetch_factor=2 if num_workers > 0 else None)


class FixedScenes:
    """A list of already-made scenes (tests, small validation sets)."""

    def __init__(self, scenes: Sequence[Scene]):
        self.scenes = list(scenes)

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> Scene:
        return self.scenes[index]
