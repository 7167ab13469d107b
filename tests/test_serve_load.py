"""The server's default batch size follows the load benchmark's measurement (bench/serve_load.py ->
bench/results/serve_load.json): the batch with the most goodput for the largest crowd measured."""

from __future__ import annotations

import importlib.util
import inspect
import json
from pathlib import Path

import pytest

from storylib import serve

ROOT = Path(__file__).resolve().parent.parent
RESULTS = json.loads((ROOT / "bench" / "results" / "serve_load.json").read_text())


def load_bench():
    spec = importlib.util.spec_from_file_location("serve_load", ROOT / "bench" / "serve_load.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_results_cover_the_crowds_and_batches():
    grid = RESULTS["grid"]
    assert {"8", "32", "64"} <= set(grid), "TTFT and tokens/s at 8, 32 and 64 clients"
    for runs in grid.values():
        assert "1" in runs and len(runs) >= 4, "no batching and several batch sizes"
        for r in runs.values():
            assert r["errors"] == 0 and r["ok"] > 0
            assert 0 < r["ttft_p50_s"] <= r["ttft_p99_s"]
            assert 0 <= r["goodput_tokens_per_s"] <= r["tokens_per_s"]
    assert RESULTS["machine"]["cores"] >= 1 and RESULTS["machine"]["cpu"]


def test_best_batch_is_recomputed_from_the_grid():
    assert load_bench().best_batch(RESULTS["grid"]) == RESULTS["best_max_batch"]


def test_best_batch_ignores_batches_larger_than_the_crowd():
    bench = load_bench()
    run = lambda g: {"goodput_tokens_per_s": g}  # noqa: E731
    grid = {"8": {"1": run(5.0), "4": run(90.0), "8": run(100.0), "16": run(130.0)},
            "2": {"1": run(50.0), "4": run(60.0)}}
    assert bench.best_batch(grid) == 8, "16 rows for 8 clients decode the same rows as 8: noise"
    grid["8"]["4"] = run(100.0)
    assert bench.best_batch(grid) == 4, "a tie goes to the smaller batch"


def test_the_server_default_follows_the_measurement(capsys):
    assert serve.DEFAULT_MAX_BATCH == RESULTS["best_max_batch"]
    assert inspect.signature(serve.create_app).parameters["max_batch"].default == serve.DEFAULT_MAX_BATCH
    with pytest.raises(SystemExit):
        serve.main(["--help"])
    assert f"default {serve.DEFAULT_MAX_BATCH})" in " ".join(capsys.readouterr().out.split())
