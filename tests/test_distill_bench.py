"""The KD overhead benchmark runs end to end and reports a ratio."""
from __future__ import annotations

from harness.bench import distill as bench


def test_bench_reports_the_kd_overhead_ratio(capsys):
    args = bench.parser().parse_args(["--student", "hrnet_w18_small_v1", "--teacher", "hrnet_w18_small_v1",
                                      "--input-size", "32", "--image-size", "64", "--batch-size", "2",
                                      "--steps", "1", "--warmup", "0"])
    result = bench.measure(args)
    assert set(result) == {"student", "teacher", "kd", "ratio"} and all(v > 0 for v in result.values())
    bench.main(["--student", "hrnet_w18_small_v1", "--teacher", "hrnet_w18_small_v1", "--input-size", "32",
                "--image-size", "64", "--batch-size", "2", "--steps", "1", "--warmup", "0"])
    assert "ratio KD / (student + teacher)" in capsys.readouterr().out
