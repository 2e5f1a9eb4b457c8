"""The deterministic scene generator of the reference world.

A scene is a phone photo of a watermarked label: a 400×400 label (content from `label_content`, watermarked by
`harness.codec.embed`) scaled to 45–80 % of the frame side, tilted, slightly put in perspective and pasted fully
inside a 400×400 background, then seen through a camera (brightness, contrast, blur, sensor noise, JPEG).

`make_scene(cfg, index)` is a pure function of (cfg, index): every random draw comes from generators seeded by
(cfg.seed, index, stream), so a trainer can build scenes on the fly and any sample can be regenerated alone. The
streams are separate so that, for one seed, a scene has the same label, secret and tilt with or without background.

Tilt convention: a positive `tilt_deg` shows the label turned counter-clockwise, the sense of PIL's
`Image.rotate(tilt_deg)`; rotating the photo by −tilt_deg straightens it.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from harness.core.constants import NUM_BITS
from harness.data.content import background, draw_source, label_content, same_scene
from harness.data.manifest import load_dataset, quad_to_str, secret_to_str, write_manifest

KINDS = ("clean", "fixed", "random")
SYNTH_CONFIG_NAME = "synth.json"
IN_PLACE = "in_place"  # the label source named for a scene watermarked in place

# Per-scene random streams (the second element of a scene's spawn key).
_LABEL, _SECRET, _GEOMETRY, _BACKGROUND, _CAMERA, _SAME_SOURCE, _IN_PLACE = range(7)
# Spawn key of the one secret a "fixed" set shares (a different key length from the per-scene keys).
_FIXED_SECRET_KEY = (0x5EC2E7,)
# Border of transparent pixels around the label before warping, wider than the bicubic kernel's reach, so the
# warped label gets a soft, antialiased edge instead of PIL's clamped hard one.
_PAD = 3


@dataclass(frozen=True)
class SynthConfig:
    kind: str = "random"  # clean (no watermark) | fixed (one secret for the set) | random (a secret per scene)
    background: bool = True  # False: the label alone fills the frame (no geometry, camera effects only)
    n: int = 16
    seed: int = 0
    tilt_range: float = 5.0  # tilt uniform in [−tilt_range, +tilt_range] degrees; 0 for sets a tilt sweep runs on
    key: int = 0  # codec key
    size: int = 400  # photo and label side
    label_fraction: tuple[float, float] = (0.45, 0.80)  # label side / frame side
    perspective: float = 0.03  # corner jitter, as a fraction of the label side
    contrast: tuple[float, float] = (0.8, 1.15)
    brightness: tuple[float, float] = (-20.0, 20.0)  # offset in 8-bit levels
    blur_sigma: tuple[float, float] = (0.0, 1.0)  # Gaussian blur, pixels (below 0.2: none)
    noise_sigma: tuple[float, float] = (0.5, 4.0)  # Gaussian sensor noise, 8-bit levels
    jpeg_quality: tuple[int, int] = (75, 95)  # inclusive
    # Share of scenes whose background is a crop of the image the label was cut from, on top of the ~1 in 10 that
    # land so by chance. A localizer loses most of its bits on those scenes (its box runs on into the background), so
    # a training set can hold more of them; evaluation sets keep 0, the world as it comes.
    same_source: float = 0.0
    # Share of watermarked scenes whose label is the background's own pixels under the quad, watermarked where they
    # lie: no seam and no change of content, so the watermark is the only cue. A localizer that finds labels by their
    # edges alone (the reference teacher's masks hardly changed when the watermark was removed) must learn to see
    # the watermark on these. Evaluation sets keep 0.
    in_place: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown scene kind {self.kind!r}; expected one of {KINDS}")
        if self.n < 0:
            raise ValueError(f"n must be >= 0, got {self.n}")
        if self.tilt_range < 0:
            raise ValueError(f"tilt_range must be >= 0, got {self.tilt_range}")
        for name in ("same_source", "in_place"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        low, high = self.label_fraction
        if not 0 < low <= high < 1:
            raise ValueError(f"label_fraction must satisfy 0 < low <= high < 1, got {self.label_fraction}")

    @property
    def set_kind(self) -> str:
        """The manifest's `kind` value: the secret kind, marked when the label fills the frame."""
        return self.kind if self.background else f"{self.kind}_nobg"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> SynthConfig:
        tuples = {k: tuple(v) for k, v in data.items() if isinstance(v, list)}
        return cls(**{**data, **tuples})


@dataclass(frozen=True, eq=False)
class Scene:
    photo: np.ndarray  # uint8 size×size×3, as decoded from `jpeg`
    mask: np.ndarray  # uint8 size×size, 0/255
    quad: np.ndarray  # float64 (4, 2): label corners TL, TR, BR, BL in photo pixels
    secret: np.ndarray | None  # uint8 (100,), None for a clean scene
    tilt_deg: float
    jpeg_quality: int
    label_fraction: float  # label side / frame side before perspective jitter
    jpeg: bytes = field(repr=False, default=b"")  # the photo's file bytes


# ---------------------------------------------------------------------------------------------- randomness


def scene_rng(cfg: SynthConfig, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(index, stream)))


def fixed_secret(seed: int) -> np.ndarray:
    """The secret every scene of a "fixed" set carries, derived from the seed alone."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=_FIXED_SECRET_KEY))
    return rng.integers(0, 2, NUM_BITS, dtype=np.uint8)


def scene_secret(cfg: SynthConfig, index: int) -> np.ndarray | None:
    if cfg.kind == "clean":
        return None
    if cfg.kind == "fixed":
        return fixed_secret(cfg.seed)
    return scene_rng(cfg, index, _SECRET).integers(0, 2, NUM_BITS, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------- codec


def watermark(label: np.ndarray, bits: np.ndarray, key: int) -> np.ndarray:
    """Embed `bits` into the label with the reference codec (imported on first use)."""
    from harness.codec import embed

    return embed(label, bits, key)


def codec_fingerprint() -> str:
    """sha256 of the codec's source files: a set generated with another codec is not reused from the cache."""
    import harness.codec

    digest = hashlib.sha256()
    for path in sorted(Path(harness.codec.__file__).parent.rglob("*.py")):
        digest.update(path.name.encode() + b"\n" + path.read_bytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- geometry


def label_quad(cfg: SynthConfig, rng: np.random.Generator) -> tuple[np.ndarray, float, float]:
    """Where the label lands: corners (TL, TR, BR, BL) in the frame, its tilt and its side fraction."""
    fraction = float(rng.uniform(*cfg.label_fraction))
    tilt = round(float(rng.uniform(-cfg.tilt_range, cfg.tilt_range)), 2)  # as written to the manifest
    side = fraction * cfg.size
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * side / 2
    theta = np.deg2rad(tilt)
    # Counter-clockwise on screen with y pointing down: x' = x cos + y sin, y' = −x sin + y cos.
    rotation = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
    corners = corners @ rotation.T
    corners += rng.uniform(-cfg.perspective, cfg.perspective, size=(4, 2)) * side
    low, high = corners.min(axis=0), corners.max(axis=0)
    margin = 1.0
    offset = np.array([rng.uniform(margin - low[i], cfg.size - margin - high[i]) for i in range(2)])
    return corners + offset, tilt, fraction


def perspective_coefficients(destination: np.ndarray, source: np.ndarray) -> tuple[float, ...]:
    """PIL PERSPECTIVE data mapping output (destination) points to input (source) points."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(destination, source):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs.extend([u, v])
    return tuple(np.linalg.solve(np.array(rows), np.array(rhs)).tolist())


def warp_label(label: np.ndarray, quad: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The label warped onto the quad in a size×size frame, and its soft coverage in [0, 1].

    A LANCZOS resize first brings the label near its final size (clean downscale), then one bicubic perspective
    warp places it. Label and coverage are padded and warped identically, so the coverage is "an all-white label
    warped the same way" with a soft edge.
    """
    side = max(int(round(np.linalg.norm(quad[1] - quad[0]))), 8)
    resized = Image.fromarray(label).resize((side, side), Image.Resampling.LANCZOS)
    padded = np.pad(np.asarray(resized), ((_PAD, _PAD), (_PAD, _PAD), (0, 0)), mode="edge")
    white = np.pad(np.full((side, side), 255, np.uint8), _PAD)
    source = np.array([[0, 0], [side, 0], [side, side], [0, side]], dtype=np.float64) + _PAD
    data = perspective_coefficients(quad, source)
    warp = dict(size=(size, size), method=Image.Transform.PERSPECTIVE, data=data, resample=Image.Resampling.BICUBIC)
    colour = np.asarray(Image.fromarray(padded).transform(**warp), dtype=np.float32)
    coverage = np.asarray(Image.fromarray(white).transform(**warp), dtype=np.float32) / 255.0
    return colour, np.clip(coverage, 0.0, 1.0)


def unwarp_region(scenery: np.ndarray, quad: np.ndarray, side: int) -> np.ndarray:
    """The scenery under `quad`, brought into a side×side label's frame (the inverse of `warp_label`'s placement)."""
    corners = np.array([[0, 0], [side, 0], [side, side], [0, side]], dtype=np.float64)
    data = perspective_coefficients(corners, quad)
    return np.asarray(Image.fromarray(scenery).transform((side, side), Image.Transform.PERSPECTIVE, data,
                                                         Image.Resampling.BICUBIC))


# ---------------------------------------------------------------------------------------------- camera


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image, out=image), 0, 255, out=image).astype(np.uint8)


def camera(photo: np.ndarray, cfg: SynthConfig, rng: np.random.Generator) -> tuple[bytes, int]:
    """Brightness, contrast, mild blur, sensor noise, then JPEG: the photo's file bytes and quality."""
    contrast = rng.uniform(*cfg.contrast)
    brightness = rng.uniform(*cfg.brightness)
    sigma = rng.uniform(*cfg.blur_sigma)
    noise_sigma = rng.uniform(*cfg.noise_sigma)
    quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
    mean = float(photo.mean())
    image = photo.astype(np.float32) * np.float32(contrast) + np.float32(mean * (1 - contrast) + brightness)
    if sigma >= 0.2:
        image = _to_uint8(image)
        image = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius=sigma)), np.float32)
    image += rng.standard_normal(size=photo.shape, dtype=np.float32) * np.float32(noise_sigma)
    image = Image.fromarray(_to_uint8(image))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue(), quality


# ---------------------------------------------------------------------------------------------- scenes


def make_label(cfg: SynthConfig, index: int, secret: np.ndarray | None) -> np.ndarray:
    label = label_content(scene_rng(cfg, index, _LABEL), cfg.size)
    return label if secret is None else watermark(label, secret, cfg.key)


def is_in_place(cfg: SynthConfig, index: int) -> bool:
    """Whether scene `index` is watermarked in place (see `SynthConfig.in_place`; a clean set has none).

    Its own stream, drawn only when `in_place` > 0, so every scene of a set without the option keeps its pixels.
    """
    return (cfg.kind != "clean" and cfg.background and cfg.in_place > 0.0
            and scene_rng(cfg, index, _IN_PLACE).random() < cfg.in_place)


def background_source(cfg: SynthConfig, index: int) -> int | None:
    """The label's own source image when scene `index` is drawn as a same-source scene, else None (a free draw).

    Its own stream, drawn only when `same_source` > 0, so every other scene, and every scene of a set without the
    option, keeps its pixels.
    """
    if cfg.same_source <= 0.0 or scene_rng(cfg, index, _SAME_SOURCE).random() >= cfg.same_source:
        return None
    return draw_source(scene_rng(cfg, index, _LABEL))  # label_content's first draw: the label's source


@dataclass(frozen=True)
class SceneSources:
    """The source images a scene's label and background were cut from (a texture background names none)."""

    label: str  # IN_PLACE when the label is the background's own pixels, watermarked where they lie
    background: tuple[str, ...]

    @property
    def same_scene(self) -> bool:
        """The background continues the label's own scene: the case localizers lose most of their bits on."""
        return self.label == IN_PLACE or any(same_scene(self.label, name) for name in self.background)


def scene_sources(cfg: SynthConfig, index: int) -> SceneSources:
    """Where scene `index` cut its label and background from, replayed from their two streams alone."""
    label, scenery = [], []
    if cfg.background:
        background(scene_rng(cfg, index, _BACKGROUND), cfg.size, background_source(cfg, index), used=scenery)
    if is_in_place(cfg, index):
        return SceneSources(IN_PLACE, tuple(scenery))
    label_content(scene_rng(cfg, index, _LABEL), cfg.size, used=label)
    return SceneSources(label[0], tuple(scenery))


def make_scene(cfg: SynthConfig, index: int) -> Scene:
    """Scene `index` of the set described by `cfg` (a pure function of both)."""
    secret = scene_secret(cfg, index)
    size = cfg.size
    if cfg.background:
        quad, tilt, fraction = label_quad(cfg, scene_rng(cfg, index, _GEOMETRY))
        scenery = background(scene_rng(cfg, index, _BACKGROUND), size, background_source(cfg, index))
        if is_in_place(cfg, index):
            photo, coverage = watermark_in_place(scenery, quad, secret, cfg.key)
        else:
            photo, coverage = paste_label(scenery, make_label(cfg, index, secret), quad)
        mask = np.where(coverage * 255.0 > 127.0, 255, 0).astype(np.uint8)
    else:
        quad = np.array([[0, 0], [size, 0], [size, size], [0, size]], dtype=np.float64)
        tilt, fraction = 0.0, 1.0
        photo = make_label(cfg, index, secret)
        mask = np.full((size, size), 255, np.uint8)
    jpeg, quality = camera(photo, cfg, scene_rng(cfg, index, _CAMERA))
    decoded = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    return Scene(decoded, mask, quad, secret, tilt, quality, fraction, jpeg)


def paste_label(scenery: np.ndarray, label: np.ndarray, quad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The photo with the label warped onto `quad` over the scenery, and the label's soft coverage."""
    colour, coverage = warp_label(label, quad, scenery.shape[0])
    alpha = coverage[..., None]
    photo = alpha * colour + (1.0 - alpha) * scenery.astype(np.float32)
    return np.clip(np.rint(photo), 0, 255).astype(np.uint8), coverage


def watermark_in_place(scenery: np.ndarray, quad: np.ndarray, secret: np.ndarray, key: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """The photo with the scenery under `quad` watermarked where it lies, and the region's soft coverage.

    The region is brought into a label's frame, watermarked there as any label is, and only the change is warped
    back: the plain and the watermarked label go through the same warp, so their difference is the watermark alone.
    """
    size = scenery.shape[0]
    plain = unwarp_region(scenery, quad, size)
    marked, coverage = warp_label(watermark(plain, secret, key), quad, size)
    unmarked, _ = warp_label(plain, quad, size)
    photo = scenery.astype(np.float32) + coverage[..., None] * (marked - unmarked)
    return np.clip(np.rint(photo), 0, 255).astype(np.uint8), coverage


def set_sources(root: str | Path) -> list[tuple[str, SceneSources]]:
    """(sample id, sources) for every row of the manifest at `root`, in its order.

    `root` is a generator folder (it holds `synth.json`) or a set combining such folders as `reference_set` does (ids
    prefixed by the folder's name); a row no generator record covers is an error naming it.
    """
    root = Path(root)
    configs: dict[str, SynthConfig | None] = {}
    sources = []
    for row in load_dataset(root):
        folder, _, name = row.id.rpartition("/")
        if folder not in configs:
            record = read_record(root / folder)
            configs[folder] = None if record is None else SynthConfig.from_json(record["config"])
        cfg = configs[folder]
        if cfg is None or not name.startswith("img_") or not name[4:].isdigit():
            raise ValueError(f"{root}: row {row.id!r} was not made by the scene generator (no {SYNTH_CONFIG_NAME} "
                             f"in {root / folder} or an id other than img_NNNNN)")
        sources.append((row.id, scene_sources(cfg, int(name[4:]))))
    return sources


# ---------------------------------------------------------------------------------------------- writing


def photo_name(index: int) -> str:
    return f"img_{index:05d}.jpg"


def mask_name(index: int) -> str:
    return f"mask_{index:05d}.png"


def resolved_config(cfg: SynthConfig) -> dict:
    """What synth.json records: the full config and the codec it was made with ("" for a clean set)."""
    return {"config": cfg.to_json(), "set_kind": cfg.set_kind,
            "codec_sha256": "" if cfg.kind == "clean" else codec_fingerprint()}


def read_record(out_dir: str | Path) -> dict | None:
    """The folder's synth.json as written by `generate` (see `resolved_config`), or None when it has none."""
    record = Path(out_dir) / SYNTH_CONFIG_NAME
    return json.loads(record.read_text()) if record.is_file() else None


def is_cached(cfg: SynthConfig, out_dir: Path) -> bool:
    if not (out_dir / "manifest.csv").is_file():
        return False
    return read_record(out_dir) == json.loads(json.dumps(resolved_config(cfg)))  # tuples read as lists


def write_scene(scene: Scene, index: int, out_dir: Path, cfg: SynthConfig) -> dict[str, str]:
    """Write the photo and mask files of one scene; return its manifest row."""
    (out_dir / photo_name(index)).write_bytes(scene.jpeg)
    Image.fromarray(scene.mask, "L").save(out_dir / mask_name(index), format="PNG")
    return {"id": f"img_{index:05d}", "file": photo_name(index), "secret": secret_to_str(scene.secret),
            "mask_file": mask_name(index), "quad": quad_to_str(scene.quad), "tilt_deg": f"{scene.tilt_deg:.2f}",
            "kind": cfg.set_kind}


def _remove_previous_set(out_dir: Path) -> None:
    """Delete what an earlier generation wrote here (only the generator's own file names)."""
    for name in ("manifest.csv", SYNTH_CONFIG_NAME):
        (out_dir / name).unlink(missing_ok=True)
    for path in list(out_dir.glob("img_[0-9]*.jpg")) + list(out_dir.glob("mask_[0-9]*.png")):
        path.unlink()


def generate(cfg: SynthConfig, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write the set to `out_dir` (photos, masks, manifest.csv, synth.json); reuse it when already made.

    A folder holding a different set is refused unless `overwrite` is set.
    """
    out_dir = Path(out_dir)
    if is_cached(cfg, out_dir) and not overwrite:
        return out_dir
    if (out_dir / "manifest.csv").exists() and not overwrite:
        raise FileExistsError(f"{out_dir} holds another dataset (synth.json differs); pass overwrite=True / --force")
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_previous_set(out_dir)
    rows = [write_scene(make_scene(cfg, index), index, out_dir, cfg) for index in range(cfg.n)]
    write_manifest(out_dir, rows)
    (out_dir / SYNTH_CONFIG_NAME).write_text(json.dumps(resolved_config(cfg), indent=2, sort_keys=True) + "\n")
    return out_dir
