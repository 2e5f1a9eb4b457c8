"""Suite fixtures: the run mode, the evaluation set, the models under test, one shared evaluation.

`pytest suites/` runs the quick mode (a handful of scenes, two tilts: fit for CI and the gate);
`pytest suites/ --benchmark` runs the full mode (the reference set, tilts −5..+5). Results land in
`reports/results/<mode>/` (`--results-dir DIR` elsewhere) and the report and the gate read them from there.

Models: the shipped zoo (`students/*/card.toml`), or `--localizer [LABEL:]NAME[=CKPT]` (repeatable, the first is the
teacher; `--input-size NAME=SIZE` sets a network's input side, by default the size recorded beside the
checkpoint by its training run or card; `--flip-test NAME` adds HRNet's flip test) and `--sdecoder NAME[=CKPT]`;
`--plugin MODULE`, `--model-option LABEL:KEY=VALUE` and `--backbone-only LABEL` as in `harness.eval`.

Data: the embedded reference world (generated once under data/quick or data/eval), or `--data DIR` (a folder with
manifest.csv). On a user's data the quick mode reads the first `--quick-photos` photos in manifest order (default 6)
at tilts 0 and 2, the full mode every photo at −5..+5; `--tilts` replaces either sweep. The run's settings
(`--tilts --angles --bn-mode --fill --roi-fn --no-oracle --exif-transpose`) mean what they mean in `harness.eval`,
whose config builder (`harness.run.options.eval_config`) the suites share; BatchNorm defaults to eval here.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

from harness.core.constants import DEFAULT_TILTS
from harness.data import load_dataset
from harness.data.reference import ReferenceSetConfig, reference_set
from harness.run import EvalConfig, ModelSpec, Summary, evaluate
from harness.run.options import SHARED_OPTIONS, add_shared_options, eval_config, parse_tilts

RESULTS = Path("reports/results")
QUICK_TILTS = (0.0, 2.0)
QUICK_PHOTOS = 6  # quick mode on a user's data: the first N photos in manifest order (--quick-photos N)
SUITE_BN_MODE = "eval"  # the suites' BatchNorm mode unless --bn-mode says otherwise (the committed records')


@dataclass(frozen=True)
class DataCounts:
    """The photos a run on a user's data reads (the first `max_photos` in manifest order, or all)."""
    n_marked: int
    n_clean: int
    n_masked: int  # photos with a ground-truth mask or quad: the oracle ROI and the IoU need one


@dataclass(frozen=True)
class SuiteSettings:
    mode: str  # "quick" (CI) or "full" (--benchmark)
    data_root: Path
    reference: ReferenceSetConfig | DataCounts  # the reference world's set, or the counts of the user's data
    tilts: tuple[float, ...]
    latency_rounds: int
    results: Path = RESULTS  # --results-dir
    user_data: bool = False  # --data given: the set is read, not generated
    max_photos: int | None = None  # quick mode on user data

    @property
    def out(self) -> Path:
        return self.results / self.mode


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness")
    group.addoption("--input-size", action="append", default=[], metavar="NAME=SIZE",
                    help="suites: input side of a localizer given with --localizer")
    group.addoption("--flip-test", action="append", default=[], metavar="NAME",
                    help="suites: a localizer given with --localizer also reads the mirror image (HRNet's flip test)")
    group.addoption("--data", default=None, metavar="DIR",
                    help="suites: evaluate on this dataset (manifest.csv) instead of the embedded reference world")
    group.addoption("--quick-photos", type=int, default=QUICK_PHOTOS, metavar="N",
                    help=f"suites, quick mode with --data: the first N photos in manifest order "
                         f"(default {QUICK_PHOTOS})")
    group.addoption("--results-dir", default=None, metavar="DIR",
                    help="suites: write results under DIR/<mode> (default reports/results/<mode>)")
    group.addoption("--tilts", default=None, help="suites: tilt sweep, start:stop:step or a comma list "
                    "(write --tilts=-5:5:1 when it starts with '-'; default: 0,2 quick, -5:5:1 full)")
    group.addoption("--angles", default=None, help="suites: decoder2's search angles (default 0,3,-3)")
    group.addoption("--bn-mode", choices=("demo", "eval"), default=None,
                    help=f"suites: BatchNorm mode (default {SUITE_BN_MODE})")
    group.addoption("--fill", choices=("black", "validity"), default=None, help="suites: EDT border fill")
    group.addoption("--roi-fn", default=None, metavar="MODULE:FUNCTION", help="suites: a user ROI function")
    group.addoption("--no-oracle", action="store_true", default=False, help="suites: skip the oracle ROI rows")
    add_shared_options(group.addoption)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # The full mode always leaves pytest-benchmark's JSON beside the other results.
    if config.getoption("benchmark") and not config.getoption("benchmark_json", None):
        path = _results(config) / "full" / "benchmark.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        config.option.benchmark_json = str(path)


def _results(config: pytest.Config) -> Path:
    return Path(config.getoption("results_dir") or RESULTS)


@pytest.fixture(scope="session")
def settings(pytestconfig: pytest.Config) -> SuiteSettings:
    return settings_from(pytestconfig)


@lru_cache(maxsize=None)
def settings_from(config: pytest.Config) -> SuiteSettings:
    full = config.getoption("benchmark")
    tilts_text = config.getoption("tilts")
    results = _results(config)
    data = config.getoption("data")
    if data is None:  # the embedded reference world, exactly as without these options
        tilts = parse_tilts(tilts_text) if tilts_text is not None else DEFAULT_TILTS if full else QUICK_TILTS
        if full:
            return SuiteSettings("full", Path("data/eval"), ReferenceSetConfig(n_marked=80, n_clean=20), tilts, 20,
                                 results)
        return SuiteSettings("quick", Path("data/quick"), ReferenceSetConfig(n_marked=4, n_clean=2), tilts, 3, results)
    tilts = parse_tilts(tilts_text) if tilts_text is not None else DEFAULT_TILTS if full else QUICK_TILTS
    max_photos = None if full else config.getoption("quick_photos")
    if max_photos is not None and max_photos < 1:
        raise pytest.UsageError(f"--quick-photos {max_photos}: expected at least 1")
    samples = load_dataset(data).samples[:max_photos]  # headers only; a faulty set fails here, every fault named
    counts = DataCounts(n_marked=sum(s.watermarked for s in samples), n_clean=sum(not s.watermarked for s in samples),
                        n_masked=sum(s.mask_path is not None or s.quad is not None for s in samples))
    return SuiteSettings("full" if full else "quick", Path(data), counts, tilts, 20 if full else 3, results,
                         user_data=True, max_photos=max_photos)


@pytest.fixture(scope="session")
def eval_data(settings: SuiteSettings) -> Path:
    if settings.user_data:
        return settings.data_root
    return reference_set(settings.reference, settings.data_root)


def _options(config: pytest.Config) -> dict:
    """The pytest options by their argparse names, as harness.eval's parser gives them to `eval_config`."""
    names = ("localizer", "sdecoder", "input_size", "flip_test", "model_option", "backbone_only", "plugin", "angles",
             "bn_mode", "fill", "roi_fn", "no_oracle", "exif_transpose", "condition", "runtime")
    shared = tuple(flag[2:].replace("-", "_") for flag, _ in SHARED_OPTIONS)  # every one harness.eval shares
    return {name: config.getoption(name) for name in dict.fromkeys(names + shared)}


@lru_cache(maxsize=None)
def _suite_config(config: pytest.Config) -> EvalConfig | None:
    """The run's EvalConfig, built by harness.eval's own builder; None with no --localizer and no model cards."""
    s = settings_from(config)
    opts = _options(config)
    if not opts["localizer"]:
        opts["zoo"] = "students"
    opts["bn_mode"] = opts["bn_mode"] or SUITE_BN_MODE
    try:
        return eval_config(opts, data=str(s.data_root), tilts=s.tilts, mode=s.mode, max_photos=s.max_photos,
                           workers=0 if s.mode == "quick" else 1)
    except ValueError as err:
        if "no model cards" in str(err):
            return None
        raise pytest.UsageError(str(err)) from None


def specs_from(config: pytest.Config) -> tuple[ModelSpec, ...]:
    """The localizers under test: --localizer options, else the shipped zoo's cards (teacher first)."""
    cfg = _suite_config(config)
    return () if cfg is None else cfg.localizers


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "localizer_spec" in metafunc.fixturenames:
        specs = specs_from(metafunc.config)
        metafunc.parametrize("localizer_spec", specs, ids=[s.label for s in specs])


@pytest.fixture(scope="session")
def localizer_specs(pytestconfig: pytest.Config) -> tuple[ModelSpec, ...]:
    specs = specs_from(pytestconfig)
    if not specs:
        pytest.fail("no model cards under students/ and no --localizer given")
    return specs


@pytest.fixture(scope="session")
def sdecoder_spec(pytestconfig: pytest.Config) -> ModelSpec:
    cfg = _suite_config(pytestconfig)
    if cfg is None:
        pytest.fail("no model cards under students/ and no --localizer given")
    return cfg.sdecoder


@pytest.fixture(scope="session")
def robustness(pytestconfig: pytest.Config, settings: SuiteSettings, eval_data: Path, localizer_specs,
               sdecoder_spec) -> tuple[EvalConfig, Summary]:
    """One evaluation of every model over the tilt sweep, shared by the suites (resumes an interrupted run).

    The progress bar (views, with an ETA) goes to the terminal: pytest's capture is suspended while it runs."""
    cfg = _suite_config(pytestconfig)
    assert cfg is not None and str(eval_data) == cfg.data
    out = settings.out / "robustness"
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else _nothing():
        try:
            summary = evaluate(cfg, out, progress=True)
        except ValueError as err:
            if "different run" not in str(err):
                raise
            print(f"suites: {err}: starting it again")
            shutil.rmtree(out)  # records of another configuration (other models or data): not this report's
            summary = evaluate(cfg, out, progress=True)
    return cfg, summary


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
