"""What an evaluation run is: the models (ModelSpec) and the run's settings (EvalConfig), validated on creation."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.conditions import resolve
from harness.core import geometry
from harness.core.bn import BN_MODES
from harness.core.constants import DEFAULT_TILTS, ROLES, SEARCH_ANGLES
from harness.models import Localizer, build_localizer, build_sdecoder, list_cards


class EvalError(ValueError):
    """The run cannot start: a model, the dataset or the out dir does not fit the configuration."""


@dataclass(frozen=True)
class ModelSpec:
    arch: str  # a registered architecture
    ckpt: str | None = None  # None: the architecture's own (random or built-in) weights
    input_size: int | None = None  # localizers: the square side the network sees; None: as given (400)
    role: str = "student"  # "teacher" or "student" (SDecoder: ignored)
    name: str = ""  # the label in records; "" → arch
    mask_from: str | None = None  # student_use_teacher_mask: label of the localizer whose mask gives the ROI
    flip_test: bool = False  # localizers: also read the mirror image and average the logits (HRNet's flip test)
    # localizers: "torch" (eager), "onnxruntime" (fp32 ONNX file) or "onnxruntime-int8" (int8 static quantisation),
    # exported from `ckpt` into the run folder; arch "onnx" takes `ckpt` as a ready .onnx file (ONNX Runtime)
    runtime: str = "torch"
    options: tuple[tuple[str, object], ...] = ()  # factory options (`--model-option LABEL:KEY=VALUE`), sorted
    mask_channel: int | None = None  # a multi-class head: the output channel read as the mask logits
    backbone_only: bool = False  # load only the tensors the checkpoint shares with the network (explicit opt-in)

    @property
    def label(self) -> str:
        return self.name or self.arch

    def build(self) -> Localizer:
        """This localizer as a run builds it: factory options, checkpoint, input size, flip test, mask channel."""
        return build_localizer(self.arch, self.input_size, self.ckpt, self.flip_test, mask_channel=self.mask_channel,
                               backbone_only=self.backbone_only, **dict(self.options))

    def build_sdecoder(self):
        """This spec as a secret decoder (factory options and checkpoint)."""
        return build_sdecoder(self.arch, self.ckpt, backbone_only=self.backbone_only, **dict(self.options))


def zoo_specs(root: str | Path = "students") -> tuple[ModelSpec, ...]:
    """The localizers of the model cards under `root`, teachers first (then by card name)."""
    cards = sorted(list_cards(root), key=lambda c: (c.role != "teacher", c.name))
    return tuple(ModelSpec(arch=c.arch, ckpt=str(c.checkpoint_path) if c.checkpoint else None,
                           input_size=c.input_size, role=c.role, name=c.name, flip_test=c.flip_test) for c in cards)


@dataclass(frozen=True)
class EvalConfig:
    localizers: tuple[ModelSpec, ...]
    sdecoder: ModelSpec
    data: str  # dataset folder (manifest.csv)
    tilts: tuple[float, ...] = DEFAULT_TILTS  # camera tilt conditions, degrees (PIL sense: counter-clockwise)
    angles: tuple[float, ...] = SEARCH_ANGLES
    bn_mode: str = "demo"  # "demo": per-image BatchNorm statistics, as the demo's batch-1 train(); "eval"
    fill: str = "black"  # EDT border of the search rotation: "black" (the demo, by value) or "validity"
    roi_fn: str | None = None  # "module:function" of a user ROI step; None: crop_mask_and_image
    oracle: bool = True  # also decode with the ground-truth mask's box (model "oracle")
    batch_size: int = 8  # views per localizer forward, ROIs per SDecoder forward
    photos_per_step: int = 2  # photos decoded together (their tilts × angles are batched)
    chunk_size: int = 8  # photos per records part: the unit of resume and of sharding
    workers: int = 0  # DataLoader processes preparing views (0: in the main process)
    # torch intra-op threads of the evaluating process while it runs (restored afterwards). The thread count changes
    # the order of floating-point sums, hence the last digits of BCE and probabilities: a fixed default makes the
    # records the same on every machine and under torchrun; parallelism comes from workers, photos per step, torchrun
    threads: int = 1
    device: str = "cpu"
    fpr_secret: str | None = None  # 0/1 text scoring clean photos; None: the first watermarked sample's secret
    mode: str = "custom"  # run label written in every record ("quick" / "full" for the suites and the gate)
    plugins: tuple[str, ...] = ()  # modules imported before the models are built (their factories register)
    exif_transpose: bool = False  # turn photos upright by their EXIF orientation tag (decoder2 does not)
    max_photos: int | None = None  # only the first N photos in manifest order (the suites' quick mode on own data)
    # camera conditions beyond the tilt (harness.conditions): (name, severities) per condition, a severity being one
    # float per part ("tilt+jpeg": (3.0, 70.0)). Empty: the tilts are the only condition (records as they always were)
    conditions: tuple[tuple[str, tuple[tuple[float, ...], ...]], ...] = ()

    def condition_points(self) -> tuple[tuple[str, tuple[float, ...]], ...]:
        """The run's condition axis, in order: one (name, severity) per point; a tilt-only run: ("tilt", (t,))."""
        if not self.conditions:
            return tuple(("tilt", (t,)) for t in self.tilts)
        return tuple((name, severity) for name, grid in self.conditions for severity in grid)

    @property
    def has_conditions(self) -> bool:
        """Whether the run holds conditions other than the tilt (its records then carry condition, severity)."""
        return any(name != "tilt" for name, _ in self.conditions)

    def __post_init__(self) -> None:
        for key in ("tilts", "angles"):  # 1 and 1.0 are the same condition: one spelling in run.json
            object.__setattr__(self, key, tuple(float(v) + 0.0 for v in getattr(self, key)))
        object.__setattr__(self, "conditions", _checked_conditions(self.conditions))
        object.__setattr__(self, "localizers", tuple(self.localizers))
        object.__setattr__(self, "plugins", tuple(self.plugins))
        if self.max_photos is not None and self.max_photos < 1:
            raise EvalError(f"max_photos must be >= 1 or None, got {self.max_photos}")
        if not self.localizers:
            raise EvalError("no localizer to evaluate")
        if self.bn_mode not in BN_MODES:
            raise EvalError(f"bn_mode {self.bn_mode!r}: expected one of {BN_MODES}")
        if self.fill not in geometry.FILLS:
            raise EvalError(f"fill {self.fill!r}: expected one of {geometry.FILLS}")
        if not self.tilts or not self.angles:
            raise EvalError("tilts and angles must not be empty")
        if len(set(self.tilts)) != len(self.tilts) or len(set(self.angles)) != len(self.angles):
            raise EvalError(f"a tilt or search angle appears twice: tilts {self.tilts}, angles {self.angles}")
        for key in ("batch_size", "photos_per_step", "chunk_size", "threads"):
            if getattr(self, key) < 1:
                raise EvalError(f"{key} must be >= 1, got {getattr(self, key)}")
        bad_roles = [m.label for m in self.localizers if m.role not in ROLES]
        if bad_roles:
            raise EvalError(f"localizers {bad_roles}: role must be one of {ROLES}")
        check_runtimes(self.localizers, self.bn_mode)


ONNX_ARCH = "onnx"  # --localizer LABEL:onnx=FILE.onnx: a team's own exported localizer
RUNTIMES = ("torch", "onnxruntime", "onnxruntime-int8")


def check_runtimes(localizers: tuple[ModelSpec, ...], bn_mode: str) -> None:
    """A runtime must be known; a deployed file has BatchNorm folded to its running statistics, so it cannot run
    BatchNorm `demo` mode (per-image statistics): refused here, before the run."""
    for m in localizers:
        if m.runtime not in RUNTIMES:
            raise EvalError(f"localizer {m.label!r}: runtime {m.runtime!r}, expected one of {RUNTIMES}")
        if m.arch == ONNX_ARCH and m.runtime == "torch":
            raise EvalError(f"localizer {m.label!r}: an .onnx file runs under onnxruntime, not torch")
    deployed = [m.label for m in localizers if m.runtime != "torch"]
    if deployed and bn_mode == "demo":
        raise EvalError(f"localizers {deployed} run under ONNX Runtime, which cannot use BatchNorm demo mode "
                        "(per-image statistics): an exported file holds the running statistics; run with "
                        "--bn-mode eval")


def _checked_conditions(items) -> tuple[tuple[str, tuple[tuple[float, ...], ...]], ...]:
    """Each name resolved (unknown → EvalError naming the known ones), severities as float tuples of the right arity,
    no condition or severity twice."""
    out = []
    for name, grid in items:
        try:
            combined = resolve(name)
            grid = tuple(combined.check(tuple(s) if isinstance(s, (tuple, list)) else (s,)) for s in grid)
        except (KeyError, ValueError) as err:
            raise EvalError(f"condition {name!r}: {err.args[0]}") from None
        if not grid or len(set(grid)) != len(grid):
            raise EvalError(f"condition {name!r}: severities {grid} must be given, each once")
        out.append((combined.name, grid))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise EvalError(f"a condition appears twice: {names}")
    return tuple(out)
