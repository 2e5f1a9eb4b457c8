"""Suite fixtures: the run mode, the reference evaluation set, the models under test, one shared evaluation.

`pytest suites/` runs the quick mode (a handful of scenes, two tilts: fit for CI and the gate);
`pytest suites/ --benchmark` runs the full mode (the reference set, tilts −5..+5). Results land in
`reports/results/<mode>/` and the report and the gate read them from there.

Models: the shipped zoo (`students/*/card.toml`), or `--localizer [LABEL:]NAME[=CKPT]` (repeatable, the first is the
teacher; `--input-size NAME=SIZE` sets a network's input side, by default the size recorded beside the
checkpoint by its training run or card; `--flip-test NAME` adds HRNet's flip test) and `--sdecoder NAME[=CKPT]`.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.data.reference import ReferenceSetConfig, reference_set
from harness.eval import _model, _sizes
from harness.evaluate import EvalConfig, ModelSpec, Summary, evaluate, zoo_specs

RESULTS = Path("reports/results")
FULL_TILTS = tuple(float(t) for t in range(-5, 6))
QUICK_TILTS = (0.0, 2.0)


@dataclass(frozen=True)
class SuiteSettings:
    mode: str  # "quick" (CI) or "full" (--benchmark)
    data_root: Path
    reference: ReferenceSetConfig
    tilts: tuple[float, ...]
    latency_rounds: int

    @property
    def out(self) -> Path:
        return RESULTS / self.mode


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("harness").addoption("--input-size", action="append", default=[], metavar="NAME=SIZE",
                                         help="suites: input side of a localizer given with --localizer")
    parser.getgroup("harness").addoption("--flip-test", action="append", default=[], metavar="NAME",
                                         help="suites: a localizer given with --localizer also reads the mirror "
                                              "image (HRNet's flip test)")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # The full mode always leaves pytest-benchmark's JSON beside the other results.
    if config.getoption("benchmark") and not config.getoption("benchmark_json", None):
        path = RESULTS / "full" / "benchmark.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        config.option.benchmark_json = str(path)


@pytest.fixture(scope="session")
def settings(pytestconfig: pytest.Config) -> SuiteSettings:
    if pytestconfig.getoption("benchmark"):
        return SuiteSettings("full", Path("data/eval"), ReferenceSetConfig(n_marked=80, n_clean=20), FULL_TILTS, 20)
    return SuiteSettings("quick", Path("data/quick"), ReferenceSetConfig(n_marked=4, n_clean=2), QUICK_TILTS, 3)


@pytest.fixture(scope="session")
def eval_data(settings: SuiteSettings) -> Path:
    return reference_set(settings.reference, settings.data_root)


def specs_from(config: pytest.Config) -> tuple[ModelSpec, ...]:
    """The localizers under test: --localizer options, else the shipped zoo's cards (teacher first)."""
    given = config.getoption("localizer")
    if given:
        sizes, flips = _sizes(config.getoption("input_size")), frozenset(config.getoption("flip_test"))
        return tuple(_model(t, "teacher" if i == 0 else "student", sizes, "--localizer", flips)
                     for i, t in enumerate(given))
    return zoo_specs("students")


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
    return _model(pytestconfig.getoption("sdecoder") or "reference_sdecoder", "sdecoder", {}, "--sdecoder")


@pytest.fixture(scope="session")
def robustness(settings: SuiteSettings, eval_data: Path, localizer_specs, sdecoder_spec) -> tuple[EvalConfig, Summary]:
    """One evaluation of every model over the tilt sweep, shared by the suites (resumes an interrupted run)."""
    cfg = EvalConfig(localizers=localizer_specs, sdecoder=sdecoder_spec, data=str(eval_data), tilts=settings.tilts,
                     bn_mode="eval", mode=settings.mode, workers=0 if settings.mode == "quick" else 1)
    out = settings.out / "robustness"
    try:
        summary = evaluate(cfg, out, progress=settings.mode == "full")
    except ValueError as err:
        if "different run" not in str(err):
            raise
        shutil.rmtree(out)  # records of another configuration (other models or data): not this report's
        summary = evaluate(cfg, out, progress=settings.mode == "full")
    return cfg, summary
