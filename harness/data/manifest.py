"""The dataset format and its validation.

A dataset is a folder holding images and `manifest.csv`, one row per sample:

    id         unique, non-empty
    file       image path relative to the folder (any format PIL decodes; converted to RGB on load)
    secret     100 characters of 0/1, or empty for an un-watermarked photo
    mask_file  optional: ground-truth label mask, single channel, values 0 and 255 only, same size as the photo
    quad       optional: label corners in photo pixels, "x0 y0 x1 y1 x2 y2 x3 y3", clockwise from top-left
    tilt_deg   optional: the camera tilt the photo was taken (or made) with, in degrees
    kind       optional: free text naming the set the sample belongs to (clean, fixed, random, ...)

`load_dataset` validates every row before anything runs and raises one `DatasetError` listing every fault by line
and id. Photos smaller than MIN_SIDE on a side are refused: the localizer's input is 400×400 and decoder2 fits the
photo to it, so a tiny photo carries no readable watermark.

Photos are validated from their headers (size, mode) unless `decode=True`: an evaluation over thousands of photos
should neither decode each one twice nor stop for one corrupt file, so a photo whose pixels turn out unreadable
(truncated, corrupt data) is recorded as a failed sample by the evaluator and the run goes on. `decode=True` (the
`check` command, the trainer) decodes every photo and lists such files as faults. Masks are always decoded: their
values are checked.
"""
from __future__ import annotations

import csv
import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from harness.core.constants import MAX_PHOTO_PIXELS, NUM_BITS
from harness.data.images import conversion_note, large_photo, open_image, read_header

MANIFEST_NAME = "manifest.csv"
REQUIRED_COLUMNS = ("id", "file", "secret")
OPTIONAL_COLUMNS = ("mask_file", "quad", "tilt_deg", "kind")
COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
MIN_SIDE = 64
# A quad corner may sit this many pixels outside the photo (rounding of a label touching the border).
QUAD_TOLERANCE_PX = 1.0


@dataclass(frozen=True)
class Fault:
    """One problem in a dataset, pointing at its manifest line (1 = header) and sample id when known."""

    message: str
    line: int | None = None
    sample_id: str | None = None

    def __str__(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.sample_id:
            where.append(f"id {self.sample_id!r}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


class DatasetError(ValueError):
    """A dataset failed validation; `faults` lists every problem found."""

    def __init__(self, root: Path, faults: Sequence[Fault]):
        self.root = root
        self.faults = list(faults)
        lines = "\n".join(f"  {fault}" for fault in self.faults)
        super().__init__(f"dataset {root}: {len(self.faults)} fault(s)\n{lines}")


@dataclass(frozen=True, eq=False)  # eq=False: numpy fields make field-wise equality ambiguous
class Sample:
    id: str
    file: str  # relative to the dataset root, as written in the manifest
    path: Path
    secret: np.ndarray | None  # uint8 (100,), read-only; None for an un-watermarked photo
    size: tuple[int, int]  # (width, height) of the photo
    line: int  # manifest line, for messages
    mask_file: str | None = None
    mask_path: Path | None = None
    quad: np.ndarray | None = None  # float64 (4, 2), read-only: TL, TR, BR, BL in photo pixels
    tilt_deg: float | None = None
    kind: str = ""
    conversion: str | None = None  # how the photo was converted to RGB ("L→RGB", ...), None when it was RGB

    @property
    def watermarked(self) -> bool:
        return self.secret is not None


@dataclass(frozen=True)
class Dataset(Sequence[Sample]):
    """A validated dataset: a read-only list of samples with the root they came from."""

    root: Path
    samples: tuple[Sample, ...]
    conversions: dict[str, str] = field(default_factory=dict)  # sample id → conversion applied on load

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index):  # type: ignore[override]
        return self.samples[index]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def by_id(self, sample_id: str) -> Sample:
        for sample in self.samples:
            if sample.id == sample_id:
                return sample
        raise KeyError(f"no sample with id {sample_id!r} in dataset {self.root}")

    def kinds(self) -> Counter:
        return Counter(sample.kind for sample in self.samples)


# ---------------------------------------------------------------------------------------------- formatting


def secret_to_str(bits: np.ndarray | None) -> str:
    """Secret bits as the manifest writes them (100 characters of 0/1, or empty)."""
    if bits is None:
        return ""
    return "".join("1" if b else "0" for b in np.asarray(bits).reshape(-1))


def quad_to_str(quad: np.ndarray | None) -> str:
    if quad is None:
        return ""
    return " ".join(f"{v:.2f}" for v in np.asarray(quad, dtype=np.float64).reshape(-1))


def write_manifest(root: str | Path, rows: Sequence[dict[str, str]]) -> Path:
    """Write manifest.csv (columns in COLUMNS order; values already formatted as strings)."""
    path = Path(root) / MANIFEST_NAME
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(COLUMNS), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({column: row.get(column, "") for column in COLUMNS})
    return path


# ---------------------------------------------------------------------------------------------- parsing


def parse_secret(text: str) -> np.ndarray | None:
    """Secret text → uint8 (100,) or None when empty; raises ValueError saying what is wrong."""
    text = text.strip()
    if not text:
        return None
    if len(text) != NUM_BITS:
        raise ValueError(f"secret has {len(text)} characters, expected {NUM_BITS} (0/1) or empty")
    others = sorted(set(text) - {"0", "1"})
    if others:
        raise ValueError(f"secret holds characters other than 0/1: {''.join(others)!r}")
    bits = np.frombuffer(text.encode("ascii"), dtype=np.uint8) - ord("0")
    bits.setflags(write=False)
    return bits


def parse_quad(text: str, size: tuple[int, int]) -> np.ndarray | None:
    """Quad text → float64 (4, 2) or None when empty; raises ValueError saying what is wrong."""
    text = text.strip()
    if not text:
        return None
    parts = text.replace(",", " ").split()
    if len(parts) != 8:
        raise ValueError(f"quad has {len(parts)} numbers, expected 8 (x0 y0 x1 y1 x2 y2 x3 y3)")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"quad holds a value that is not a number: {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"quad holds a value that is not finite: {text!r}")
    quad = np.array(values, dtype=np.float64).reshape(4, 2)
    _check_quad_shape(quad, size)
    quad.setflags(write=False)
    return quad


def _check_quad_shape(quad: np.ndarray, size: tuple[int, int]) -> None:
    width, height = size
    tol = QUAD_TOLERANCE_PX
    outside = (quad[:, 0] < -tol) | (quad[:, 0] > width + tol) | (quad[:, 1] < -tol) | (quad[:, 1] > height + tol)
    if outside.any():
        raise ValueError(f"quad corner {int(np.argmax(outside))} lies outside the {width}×{height} photo")
    edges = np.roll(quad, -1, axis=0) - quad
    turns = edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1] - edges[:, 1] * np.roll(edges, -1, axis=0)[:, 0]
    # With y pointing down, a clockwise walk on screen turns with a positive cross product at every corner.
    if not (turns > 0).all():
        raise ValueError("quad is not a convex quadrilateral listed clockwise from top-left")


def parse_tilt(text: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        tilt = float(text)
    except ValueError:
        raise ValueError(f"tilt_deg {text!r} is not a number") from None
    if not math.isfinite(tilt):
        raise ValueError(f"tilt_deg {text!r} is not finite")
    return tilt


# ---------------------------------------------------------------------------------------------- validation


@dataclass
class _RowCheck:
    """Validation of one manifest row; collects faults instead of stopping at the first."""

    root: Path
    line: int
    row: dict[str, str]
    decode: bool  # decode the photo's pixels, not only its header
    faults: list[Fault] = field(default_factory=list)

    @property
    def sample_id(self) -> str:
        return (self.row.get("id") or "").strip()

    def fault(self, message: str) -> None:
        self.faults.append(Fault(message, self.line, self.sample_id or None))

    def resolve(self, column: str) -> Path | None:
        """The file named in `column`, checked to be a relative path to an existing file inside the root."""
        name = (self.row.get(column) or "").strip()
        if not name:
            self.fault(f"{column} is empty")
            return None
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts:
            self.fault(f"{column} {name!r} must be a path relative to the dataset folder, inside it")
            return None
        path = self.root / relative
        if not path.is_file():
            self.fault(f"{column} {name!r} not found")
            return None
        return path

    def photo(self, path: Path) -> tuple[tuple[int, int], str | None] | None:
        try:
            size, mode = read_header(path)
            if self.decode:
                open_image(path)  # every pixel: a truncated or corrupt file raises here
        except Image.DecompressionBombError as error:  # Pillow's refusal, before any pixel is read
            self.fault(f"file {path.name!r} is too large to evaluate ({error}); the harness takes photos up to "
                       f"{MAX_PHOTO_PIXELS:,} pixels: downscale it first")
            return None
        except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
            self.fault(f"file {path.name!r} cannot be decoded: {type(error).__name__}: {error}")
            return None
        if min(size) < MIN_SIDE:
            self.fault(f"file {path.name!r} is {size[0]}×{size[1]}, smaller than {MIN_SIDE} px on a side")
            return None
        return size, conversion_note(mode)

    def mask(self, path: Path, size: tuple[int, int]) -> bool:
        try:
            mask = open_image(path)
        except Exception as error:
            self.fault(f"mask_file {path.name!r} cannot be decoded: {type(error).__name__}: {error}")
            return False
        if mask.mode not in ("L", "1"):
            self.fault(f"mask_file {path.name!r} has mode {mask.mode}, expected a single-channel 0/255 image")
            return False
        if mask.size != size:
            self.fault(f"mask_file {path.name!r} is {mask.size[0]}×{mask.size[1]}, the photo is {size[0]}×{size[1]}")
            return False
        values = np.unique(np.asarray(mask.convert("L")))
        if not set(values.tolist()) <= {0, 255}:
            example = int(values[values % 255 != 0][0])
            self.fault(f"mask_file {path.name!r} holds values other than 0 and 255 (e.g. {example})")
            return False
        return True

    def parsed(self, column: str, parse, *args):
        try:
            return parse(self.row.get(column) or "", *args)
        except ValueError as error:
            self.fault(str(error))
            return None

    def sample(self) -> Sample | None:
        if not self.sample_id:
            self.fault("id is empty")
        photo_path = self.resolve("file")
        photo = self.photo(photo_path) if photo_path else None
        secret = self.parsed("secret", parse_secret)
        size = photo[0] if photo else None
        quad = self.parsed("quad", parse_quad, size) if size and (self.row.get("quad") or "").strip() else None
        mask_path = self.resolve("mask_file") if (self.row.get("mask_file") or "").strip() else None
        if mask_path and size:
            self.mask(mask_path, size)
        tilt = self.parsed("tilt_deg", parse_tilt)
        if self.faults or photo is None:
            return None
        return Sample(
            id=self.sample_id, file=self.row["file"].strip(), path=photo_path, secret=secret, size=size,
            line=self.line, mask_file=(self.row.get("mask_file") or "").strip() or None, mask_path=mask_path,
            quad=quad, tilt_deg=tilt, kind=(self.row.get("kind") or "").strip(), conversion=photo[1],
        )


def _read_manifest(root: Path) -> tuple[list[tuple[int, dict[str, str]]], list[Fault]]:
    """Rows of manifest.csv with their line numbers, or the faults that stop reading it."""
    path = root / MANIFEST_NAME
    if not path.is_file():
        return [], [Fault(f"{MANIFEST_NAME} not found in {root}")]
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                return [], [Fault(f"{MANIFEST_NAME} lacks column(s) {', '.join(missing)} (header: {header})", 1)]
            rows = [(reader.line_num, row) for row in reader]
    except (UnicodeDecodeError, csv.Error) as error:
        return [], [Fault(f"{MANIFEST_NAME} cannot be read: {error}")]
    if not rows:
        return [], [Fault(f"{MANIFEST_NAME} has no samples")]
    return rows, []


def manifest_rows(root: str | Path) -> list[dict[str, str]]:
    """The manifest's rows as written (cells as text), for sets built from other sets; validate with load_dataset."""
    rows, faults = _read_manifest(Path(root))
    if faults:
        raise DatasetError(Path(root), faults)
    return [row for _, row in rows]


def _duplicate_faults(rows: list[tuple[int, dict[str, str]]]) -> list[Fault]:
    first_line: dict[str, int] = {}
    faults = []
    for line, row in rows:
        sample_id = (row.get("id") or "").strip()
        if not sample_id:
            continue
        if sample_id in first_line:
            faults.append(Fault(f"duplicate id (first on line {first_line[sample_id]})", line, sample_id))
        else:
            first_line[sample_id] = line
    return faults


def _extra_field_faults(rows: list[tuple[int, dict[str, str]]]) -> list[Fault]:
    # csv.DictReader puts surplus cells under the key None: a row with more cells than the header.
    return [Fault("row has more cells than the header", line, (row.get("id") or "").strip() or None)
            for line, row in rows if row.get(None)]  # type: ignore[call-overload]


def load_dataset(root: str | Path, *, decode: bool = False) -> Dataset:
    """Read and validate the dataset at `root`; raise DatasetError listing every fault.

    decode: decode every photo's pixels (a truncated or corrupt photo is then a fault); otherwise headers only.
    """
    root = Path(root)
    rows, faults = _read_manifest(root)
    if faults:
        raise DatasetError(root, faults)
    faults = _duplicate_faults(rows) + _extra_field_faults(rows)
    samples = []
    for line, row in rows:
        check = _RowCheck(root, line, row, decode)
        sample = check.sample()
        faults.extend(check.faults)
        if sample is not None:
            samples.append(sample)
    if faults:
        raise DatasetError(root, sorted(faults, key=lambda f: f.line or 0))
    conversions = {s.id: s.conversion for s in samples if s.conversion}
    return Dataset(root=root, samples=tuple(samples), conversions=conversions)


# ---------------------------------------------------------------------------------------------- warnings


def manifest_warnings(dataset: Dataset) -> list[str]:
    """What a valid dataset silently turns off or may read wrongly: an unknown column (a misspelt optional one,
    named with the column it probably meant), photos without a ground-truth mask (no oracle ROI, no IoU), photos
    whose EXIF orientation tag says they are stored turned (read as stored unless `--exif-transpose`)."""
    import difflib

    from harness.data.images import exif_orientation

    notes = []
    rows, _ = _read_manifest(dataset.root)
    header = [c for c in (rows[0][1] if rows else {}) if c is not None]
    for column in header:
        if column not in COLUMNS:
            guess = difflib.get_close_matches(column.strip().lower(), OPTIONAL_COLUMNS + REQUIRED_COLUMNS, n=1,
                                              cutoff=0.6)
            meant = f"; did you mean {guess[0]!r}?" if guess else ""
            notes.append(f"column {column!r} is not a manifest column and is ignored{meant} "
                         f"(columns: {', '.join(COLUMNS)})")
    unmasked = [s for s in dataset if s.mask_path is None and s.quad is None]
    if unmasked:
        which = "no photo has" if len(unmasked) == len(dataset) else f"{len(unmasked)} of {len(dataset)} photos have"
        notes.append(f"{which} a ground-truth mask (mask_file or quad): for them the oracle ROI (decoding from the "
                     "true label's box, which tells a localizer's loss from the decoder's) and the mask IoU are "
                     f"n/a; bit accuracy, word accuracy and detection are measured as usual (e.g. {unmasked[0].id})")
    turned = [(s.id, o) for s in dataset if (o := exif_orientation(s.path)) is not None]
    if turned:
        examples = ", ".join(f"{i} (orientation {o})" for i, o in turned[:5])
        notes.append(f"{len(turned)} photo(s) carry an EXIF orientation tag saying they are stored turned or "
                     f"mirrored: {examples}. They are read as stored, as decoder2's plain Image.open reads them; if "
                     "your phones rely on the tag, evaluate with --exif-transpose (recorded in the run)")
    large = [s for s in dataset if large_photo(s.size)]
    if large:  # Pillow's own DecompressionBombWarning is silenced where photos are opened: said here, plainly
        examples = ", ".join(f"{s.file} ({s.size[0]}×{s.size[1]}, {s.size[0] * s.size[1] / 1e6:.0f} megapixels)"
                             for s in large[:5])
        notes.append(f"{len(large)} photo(s) have more than {Image.MAX_IMAGE_PIXELS:,} pixels, where Pillow warns of "
                     f"a possible decompression bomb: {examples}. They are evaluated at full size (the camera tilt "
                     "runs before decoder2's 400×400 fit), which needs about 23 bytes of memory a pixel in each "
                     f"worker; photos above {MAX_PHOTO_PIXELS:,} pixels are refused. Downscale them if that is "
                     "too much (the tilt then runs at the smaller size)")
    return notes


# ---------------------------------------------------------------------------------------------- provenance


def dataset_hash(root: str | Path) -> str:
    """sha256 over manifest.csv and every file it references (photo, then mask), in manifest order.

    Each file enters as its relative name, its byte length and its bytes, so renaming or moving bytes between
    files changes the hash. A missing file raises DatasetError.
    """
    root = Path(root)
    rows, faults = _read_manifest(root)
    if faults:
        raise DatasetError(root, faults)
    digest = hashlib.sha256()
    digest.update((root / MANIFEST_NAME).read_bytes())
    for line, row in rows:
        for column in ("file", "mask_file"):
            name = (row.get(column) or "").strip()
            if not name:
                continue
            path = root / name
            if not path.is_file():
                raise DatasetError(root, [Fault(f"{column} {name!r} not found", line, row.get("id"))])
            digest.update(f"\n{name}\n{path.stat().st_size}\n".encode())
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()
