"""`scalelearn evaluate`: the in-depth per-scale test of E1 (SPEC §7, last paragraph; §10.4).

A run's best checkpoint is evaluated on its dataset's test digits rendered at the 45 log-spaced
scales 2^-1 ... 2^3.5 of `scalelearn.data.in_depth`, one batch at a time (never stored), with
the run's train normalisation (kept in the checkpoint). Output: per_scale.csv, one row per scale
with the columns scale_index, scale, n (digits), errors, error (%); a run whose summary has a
status other than "ok" gets n 0 and empty errors.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from scalelearn.errors import ScalelearnError

COLUMNS = ("scale_index", "scale", "n", "errors", "error")


def _device(run_config: dict, requested: str):
    import torch

    if requested == "auto":
        on_cpu = run_config["train"].get("accelerator") == "cpu" or not torch.cuda.is_available()
        return torch.device("cpu" if on_cpu else "cuda")
    return torch.device(requested)


def load_network(checkpoint: str | os.PathLike, device):
    """A run's trained network from its checkpoint, without Lightning (whose import takes about
    3 s of the per-scale test's 9 s per quick-preset run): -> (network in eval mode, train mean,
    train std), mean and std the float32 buffers ScaleLearner normalises with."""
    import torch

    from scalelearn.nn.models import build_model

    saved = torch.load(checkpoint, map_location=device, weights_only=True)
    state = saved["state_dict"]
    network = build_model(saved["hyper_parameters"]["model"]).to(device)
    # ScaleLearner keeps the network as `model.`; its load hooks read older layouts too.
    network.load_state_dict(
        {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    )
    return network.eval(), state["mean"], state["std"]


def evaluate_per_scale(
    run_folder: str | os.PathLike,
    *,
    test_subsample: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
) -> list[dict]:
    """Evaluate a run's best.ckpt at every in-depth scale; one dict per scale (COLUMNS).

    The subsample of test digits is seeded by the run's seed (the same digits at every scale).
    Images are rendered `batch_size` at a time (default: the run's
    train.eval_batch_size); the forward passes run in memory-bounded chunks (ChunkedEvaluator).
    """
    import torch

    from scalelearn.data.datasets import load_dataset
    from scalelearn.data.in_depth import IN_DEPTH_SCALES, InDepthBatches
    from scalelearn.data.loader import normalise
    from scalelearn.data.store import read_manifest
    from scalelearn.nn.evaluation import ChunkedEvaluator

    folder = Path(run_folder)
    summary = folder / "summary.json"
    status = json.loads(summary.read_text()).get("status", "ok") if summary.is_file() else "ok"
    if status != "ok":
        # A failed run (e.g. diverged) has no test numbers, so no per-scale numbers either; the
        # rows keep the DAG whole and the per-scale figure counts only ok runs.
        return [
            {"scale_index": i, "scale": float(s), "n": 0, "errors": math.nan, "error": math.nan}
            for i, s in enumerate(IN_DEPTH_SCALES)
        ]
    checkpoint = folder / "best.ckpt"
    if not checkpoint.is_file():
        raise ScalelearnError(f"{checkpoint} not found; train the run first (scalelearn train)")
    run_config = json.loads((folder / "config.json").read_text())
    dataset_path = run_config["dataset"]
    if not Path(dataset_path).is_file():
        raise ScalelearnError(f"dataset {dataset_path} of the run not found; build it first")
    dataset = load_dataset(dataset_path)
    # Render like the dataset was rendered (its manifest records the resampler).
    interpolation = read_manifest(dataset_path).get("parameters", {}).get("interpolation", {})
    device = _device(run_config, device)
    network, mean, std = load_network(checkpoint, device)
    evaluate = ChunkedEvaluator(network)  # bounded memory, as validation (ScaleLearner.predict)
    batches = InDepthBatches(
        dataset["test_digits"],
        dataset["test_labels"],
        canvas=dataset["test_images"].shape[-1],
        batch_size=batch_size or run_config["train"]["eval_batch_size"],
        n_digits=test_subsample,
        seed=int(run_config.get("seed", 0)),
        antialias=bool(interpolation.get("antialias", False)),
        # Rendered where the network runs: on a GPU, rendering on the CPU (about 3,100 images/s
        # at 168² on a 2-core CPU) is slower than the network itself (18,000-29,000 images/s on
        # an H200). float64 resampling gives the same grey levels on either device.
        device=device,
    )
    errors = [0] * len(IN_DEPTH_SCALES)
    with torch.inference_mode():
        for batch in batches:
            logits = evaluate(normalise(batch.images.unsqueeze(1), mean, std))
            wrong = logits.argmax(1) != batch.labels
            errors[batch.scale_index] += int(wrong.sum())
    n = batches.n_digits
    return [
        {
            "scale_index": i,
            "scale": float(scale),
            "n": n,
            "errors": errors[i],
            "error": 100.0 * errors[i] / n,
        }
        for i, scale in enumerate(IN_DEPTH_SCALES)
    ]


def _evaluate(args: argparse.Namespace) -> None:
    from scalelearn.allocator import reuse_freed_memory
    from scalelearn.atomic import write_rows

    # As in training: the 45 scales' forward passes allocate and free the same large blocks;
    # glibc's defaults would map each afresh (the quick preset's per-scale test of one run,
    # 2,700 images at 84 px: 16.8 s).
    reuse_freed_memory()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows = evaluate_per_scale(
        args.run, test_subsample=args.test_subsample, batch_size=args.batch_size, device=args.device
    )
    out = args.out or Path(args.run) / "per_scale.csv"
    write_rows(out, rows)
    if not rows[0]["n"]:
        print(f"{out}: the run did not finish ok; no per-scale numbers")
        return
    worst = max(rows, key=lambda row: row["error"])
    print(
        f"{out}: {len(rows)} scales x {rows[0]['n']} digits; worst error {worst['error']:.2f}% "
        f"at scale {worst['scale']:.3g}"
    )


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="per-scale test of a trained run (in-depth test, E1)",
        description="Evaluate a run's best checkpoint on its test digits rendered at 45 "
        "log-spaced scales 2^-1 ... 2^3.5 (on the fly, in batches, with the train "
        "normalisation) and write per_scale.csv: scale_index, scale, n, errors, error (%).",
    )
    parser.add_argument("--run", required=True, help="the run folder (holds best.ckpt)")
    parser.add_argument(
        "--test-subsample", type=int, default=None, help="evaluate this many test digits (seeded)"
    )
    parser.add_argument(
        "--batch-size", type=int, help="images per forward pass (default: train.eval_batch_size)"
    )
    parser.add_argument("--device", default="auto", help="auto (the run's accelerator), cpu, cuda")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument("--out", type=Path, help="CSV to write (default RUN/per_scale.csv)")
    parser.set_defaults(func=_evaluate)
