"""`scalelearn cost` (issue #9): the work of every run of a grid, from the protocol (SPEC §6-§7:
validation after every epoch, the test split once, the per-scale test at 45 scales), turned into
hours at measured rates; one measurement per distinct network."""

import pytest
import torch

from scalelearn import allocator, bench, cost
from scalelearn.cli import main
from scalelearn.experiments import all_runs, load_config

TRAIN_RATE, EVAL_RATE = 100.0, 400.0  # images/s the fake measurement reports


@pytest.fixture
def measured(monkeypatch):
    """Replace the timing by fixed rates; record the specs measured."""
    specs = []

    def fake_bench(name, steps, dense_steps, warmup, device, bf16, eval_steps, spec, inputs):
        specs.append({**spec, "timed_on": inputs})
        row = {"images_per_s": TRAIN_RATE, "eval_images_per_s": EVAL_RATE, "peak_mib": 1.0}
        return [{**row, "batch": spec["batch"], "eval_batch": spec["eval_batch"]}]

    monkeypatch.setattr(bench, "bench_config", fake_bench)
    return specs


def test_work_and_hours_follow_the_protocol(measured):
    config = load_config("config/test.yaml")
    # More than one epoch, so that "validation after every epoch" is told apart from "once".
    config["train"] |= {"epochs": 3, "lr_milestones": [2], "scale_lr_milestones": [2]}
    works, networks = cost.grid_cost(config, torch.device("cpu"), False, 1, 1, 1)
    runs = {f"{run.experiment}/{run.run_id}": run for r in all_runs(config).values() for run in r}
    assert sorted(f"{w['experiment']}/{w['run_id']}" for w in works) == sorted(runs)
    for work in works:
        run = runs[f"{work['experiment']}/{work['run_id']}"]
        train, splits = run.config["train"], run.config["dataset_params"]["splits"]
        assert work["train_images"] == train["epochs"] * splits["train"]
        per_scale = config["experiments"][run.experiment].get("per_scale")
        expected = 0
        if per_scale is not None:
            expected = 45 * min(per_scale["test_subsample"] or splits["test"], splits["test"])
        assert work["per_scale_images"] == expected
        assert work["eval_images"] == train["epochs"] * splits["val"] + splits["test"] + expected
        assert work["train_h"] == pytest.approx(work["train_images"] / TRAIN_RATE / 3600)
        assert work["eval_h"] == pytest.approx(work["eval_images"] / EVAL_RATE / 3600)
    assert any(work["per_scale_images"] for work in works)  # E1 has the per-scale test

    # One measurement per distinct network: E1's ISRs differ, its widths and seeds do not.
    assert len(measured) == len(networks)
    keys = {(str(spec["model"]), spec["input"], spec.get("augment")) for spec in measured}
    assert len(keys) == len(measured)
    e1 = {str(run.config["model"]) for run in runs.values() if run.experiment == "e1"}
    assert len([w for w in networks if w["first_run"].startswith("e1/")]) == len(e1)
    # The input side is the dataset's canvas (E1-E4) or the 28-pixel MNIST frame (E5); "+"
    # runs are measured with their augmentation.
    canvas = config["datasets"]["scale_distribution"]["canvas"]
    assert {spec["input"] for spec in measured} == {(1, canvas, canvas), (1, 28, 28)}
    assert any(spec.get("augment") == "rescale" for spec in measured)


def test_cost_command_prints_hours_per_experiment(measured, capsys, monkeypatch):
    # It measures with malloc reusing freed memory, as training and evaluation run (else the
    # evaluation rates come out about half of theirs on the CPU).
    # And under training's determinism settings, which choose other kernels on a GPU.
    from scalelearn.train import run

    calls, settings = [], []
    monkeypatch.setattr(allocator, "reuse_freed_memory", lambda: calls.append(len(measured)))
    monkeypatch.setattr(run, "training_determinism", lambda on_cpu: settings.append(on_cpu))
    main(["cost", "--configfile", "config/test.yaml", "--device", "cpu"])
    assert calls == [0], "reuse_freed_memory once, before the first measurement"
    assert settings == [True], "training_determinism(on_cpu=True) once"
    out = capsys.readouterr().out
    for name in ("e1", "e2", "e3", "e4", "e5", "total", "train_h", "eval_h", "network 1"):
        assert name in out
    # Timed on digits as bench is, or on noise where asked (a machine without the digits).
    assert {spec["timed_on"] for spec in measured} == {"digits"}
    measured.clear()
    main(["cost", "--configfile", "config/test.yaml", "--device", "cpu", "--inputs", "noise"])
    assert measured and {spec["timed_on"] for spec in measured} == {"noise"}
