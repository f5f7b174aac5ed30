"""`scalelearn cost`: the compute time of a config's whole grid, from measured throughput.

Every run of the config is reduced to its work: images trained (epochs × train split) and images
evaluated (validation every epoch, the test split once, and for experiments with `per_scale` the
in-depth test: 45 scales × the test digits). Runs that train the same network on the same image
size share one measurement: `scalelearn bench`'s fast training step at the run's batch size and
its chunked evaluation at the run's eval batch size, on bench's inputs (`--inputs`: digits
rendered as the datasets are, or noise), under training's determinism settings. The estimate
counts the network's time only: data loading, the per-scale test's image rendering, checkpoints,
logging and the training loop's own work come on top.
"""

from __future__ import annotations

import argparse
import json

from scalelearn.errors import ScalelearnError


def run_work(run, per_scale: dict | None) -> dict:
    """A run's network work: its bench spec and the images it trains on and evaluates.
    per_scale: its experiment's `per_scale` section (None: no per-scale test)."""
    from scalelearn.data.datasets import MNIST_FRAME  # E5's images: single MNIST frames
    from scalelearn.data.in_depth import IN_DEPTH_SCALES

    config, params = run.config, run.config["dataset_params"]
    train, splits = config["train"], params["splits"]
    side = params.get("canvas", MNIST_FRAME)
    per_scale_images = 0
    if per_scale is not None:
        digits = min(per_scale.get("test_subsample") or splits["test"], splits["test"])
        per_scale_images = len(IN_DEPTH_SCALES) * digits
    return {
        "experiment": run.experiment,
        "run_id": run.run_id,
        "spec": {
            "model": {k: v for k, v in config["model"].items() if k != "implementation"},
            "input": (1, side, side),
            "batch": train["batch_size"],
            # The per-scale test's batch_size is only its rendering batch: its forward passes go
            # through the same memory-bounded chunks as validation's.
            "eval_batch": train["eval_batch_size"],
            **({"augment": "rescale"} if train["augment"] == "rescale" else {}),
        },
        "train_images": train["epochs"] * splits["train"],
        "eval_images": train["epochs"] * splits["val"] + splits["test"] + per_scale_images,
        "per_scale_images": per_scale_images,
    }


def grid_cost(
    config: dict,
    device,
    bf16: bool,
    steps: int,
    warmup: int,
    eval_steps: int,
    inputs: str = "digits",
):
    """-> (one row per run with its measured hours, one row per distinct network measured);
    inputs: what the networks are timed on (scalelearn.bench.INPUTS)."""
    from scalelearn.bench import bench_config
    from scalelearn.experiments import all_runs

    works = [
        run_work(run, config["experiments"][name].get("per_scale"))
        for name, runs in all_runs(config).items()
        for run in runs
    ]
    measured: dict[str, dict] = {}
    for work in works:
        key = json.dumps(work["spec"], sort_keys=True)
        if key not in measured:
            label = f"network {len(measured) + 1}"
            fast = bench_config(
                label,
                steps,
                0,
                warmup,
                device,
                bf16,
                eval_steps=eval_steps,
                spec=work["spec"],
                inputs=inputs,
            )[0]
            kept = ("images_per_s", "eval_images_per_s", "batch", "eval_batch", "peak_mib")
            measured[key] = {
                "network": label,
                "first_run": f"{work['experiment']}/{work['run_id']}",
                **{k: fast[k] for k in kept},
            }
        rates = measured[key]
        work["network"] = rates["network"]
        work["train_h"] = work["train_images"] / rates["images_per_s"] / 3600
        work["eval_h"] = work["eval_images"] / rates["eval_images_per_s"] / 3600
        del work["spec"]
    return works, list(measured.values())


def _format(works: list[dict], networks: list[dict], device, bf16: bool) -> str:
    import pandas as pd

    runs = pd.DataFrame(works)
    by_experiment = runs.groupby("experiment", sort=False).agg(
        runs=("run_id", "size"),
        networks=("network", "nunique"),
        train_images=("train_images", "sum"),
        eval_images=("eval_images", "sum"),
        per_scale_images=("per_scale_images", "sum"),
        train_h=("train_h", "sum"),
        eval_h=("eval_h", "sum"),
    )
    by_experiment["hours"] = by_experiment["train_h"] + by_experiment["eval_h"]
    by_experiment.loc["total"] = by_experiment.sum()
    by_experiment.loc["total", "networks"] = len(networks)
    lines = [
        f"device {device}{' (bf16 autocast)' if bf16 else ''}: network time of the whole grid",
        by_experiment.to_string(float_format=lambda v: f"{v:.2f}"),
        "",
        "networks measured (fast implementation; images/s training and evaluation):",
        pd.DataFrame(networks).to_string(index=False, float_format=lambda v: f"{v:.1f}"),
        "",
        "hours: network time at the measured rates, one job at a time; data loading, the "
        "per-scale test's rendering, checkpoints and logging come on top",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    import torch

    from scalelearn.allocator import reuse_freed_memory
    from scalelearn.bench import _device
    from scalelearn.experiments import load_config
    from scalelearn.train.run import training_determinism

    reuse_freed_memory()  # as training and the per-scale test run (bench does the same)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    if args.bf16 and device.type != "cuda":
        raise ScalelearnError("--bf16 needs a CUDA device (bfloat16 autocast is timed on GPU only)")
    # Training steps timed as training runs them: its deterministic algorithms change kernels on
    # CUDA (a scatter that sorts its indices once took 42 % of an E1 step on an H100).
    training_determinism(device.type == "cpu")
    config = load_config(args.configfile)
    works, networks = grid_cost(
        config, device, args.bf16, args.steps, args.warmup, args.eval_steps, args.inputs
    )
    if args.json:
        print(json.dumps({"runs": works, "networks": networks}, indent=1))
        return
    print(_format(works, networks, device, args.bf16))


def register(subparsers) -> None:
    from scalelearn.bench import INPUTS
    from scalelearn.cli import positive_int

    parser = subparsers.add_parser(
        "cost",
        help="compute time of a config's whole grid, from measured training and evaluation rates",
        description=__doc__.split("\n\n", 1)[1].replace("\n", " "),
    )
    parser.add_argument("--configfile", default="config/config.yaml", help="the config to cost")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA only)")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads")
    parser.add_argument("--steps", type=positive_int, default=5, help="measured training steps")
    parser.add_argument("--warmup", type=positive_int, default=2, help="unmeasured steps first")
    parser.add_argument(
        "--eval-steps", type=positive_int, default=2, help="measured evaluation calls"
    )
    parser.add_argument(
        "--inputs",
        choices=INPUTS,
        default="digits",
        help="what the networks are timed on, as in `scalelearn bench` (noise needs no digits)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead")
    parser.set_defaults(func=run)
