"""`scalelearn bench`: training throughput of the fast and the dense scale-equivariant layers.

For every named configuration, two copies of the same model (same initial weights) are trained on
the same seeded random batch, one with `implementation: fast` and one with `dense`, alternating
step by step in one process so that both see the same machine load. A step is forward, cross
entropy, backward, Adam step and the scale projection, as in training.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

from scalelearn.allocator import allocated_bytes, reuse_freed_memory
from scalelearn.cli import non_negative_int, positive_int
from scalelearn.errors import ScalelearnError

# model: overrides of MODEL_DEFAULTS; input: [C, H, W]; slow_dense: the dense reference takes
# minutes per step on CPU (oneDNN's conv2d is pathological for 123×123 and larger kernels), so it
# runs there only with --all-dense.
CONFIGS: dict[str, dict] = {
    "e2_toy": {
        "about": "E2 toy, learn ISR, σ_b 2 learnable, ISR 3 (K 49)",
        "model": {
            "name": "toy",
            "scale_mode": "single_ratio_squared",
            "learn_sigma_basis": True,
            "sigma_basis": 2.0,
            "isr": 3.0,
        },
        "input": (1, 168, 168),
        "batch": 8,
    },
    "e1_toy_isr7.56": {
        "about": "E1 toy, fixed scales, σ_b 2, ISR 7.56 (K 123)",
        "model": {"name": "toy", "scale_mode": "fixed", "sigma_basis": 2.0, "isr": 7.56},
        "input": (1, 168, 168),
        "batch": 8,
        "slow_dense": True,
    },
    "e3_toy_worst": {
        "about": "E3 worst case, learn ISR, σ_b 4, ISR 6 (K 193)",
        "model": {
            "name": "toy",
            "scale_mode": "single_ratio_squared",
            "learn_sigma_basis": True,
            "sigma_basis": 4.0,
            "isr": 6.0,
        },
        "input": (1, 168, 168),
        "batch": 8,
        "slow_dense": True,
    },
    "e5_sesn": {
        "about": "E5 SESN network, learn ISR, σ_b 1.5, ISR 2 (K 25)",
        "model": {"name": "sesn", "scale_mode": "single_ratio_squared"},
        "input": (1, 28, 28),
        "batch": 32,
    },
    "e5_sesn_plus": {
        "about": 'e5_sesn with the "+" augmentation (a random rescale of every uint8 batch)',
        "model": {"name": "sesn", "scale_mode": "single_ratio_squared"},
        "input": (1, 28, 28),
        "batch": 32,
        "augment": "rescale",
    },
    "tiny": {
        "about": "smoke test: toy model on a 24×24 canvas",
        "model": {"name": "toy", "scale_mode": "single_ratio_squared", "sigma_basis": 1.0},
        "input": (1, 24, 24),
        "batch": 2,
    },
}
DEFAULT_CONFIGS = ("e2_toy", "e1_toy_isr7.56", "e5_sesn")
IMPLEMENTATIONS = ("fast", "dense")


class _PeakMemory:
    """Peak memory of the code run inside `with`, in MiB above the level at entry.

    CUDA: torch.cuda.max_memory_allocated. CPU: the bytes malloc has handed out
    (scalelearn.allocator.allocated_bytes), sampled every 2 ms by a thread, so a peak shorter
    than that can be missed: a lower bound of the step's working memory.
    """

    def __init__(self, device):
        self.device = device
        self.peak_mib: float | None = None

    def __enter__(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        self._start = allocated_bytes()
        self._peak = self._start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        if self._start is not None:
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, allocated_bytes())

    def __exit__(self, *exc) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            self.peak_mib = (peak - self._start) / 2**20
            return
        if self._start is None:
            return
        self._stop.set()
        self._thread.join()
        self.peak_mib = (self._peak - self._start) / 2**20


def _trainer(model_cfg: dict, implementation: str, state: dict | None, device, bf16: bool):
    """(model, step function) for one implementation; `state` makes the weights identical."""
    import torch
    import torch.nn.functional as F

    from scalelearn.nn.models import build_model

    model = build_model({**model_cfg, "implementation": implementation}).to(device)
    if state is not None:
        model.load_state_dict(state)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(images, labels) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        model.internal_scales.constrain_()

    return model, step


def bench_config(
    name: str,
    steps: int,
    dense_steps: int,
    warmup: int,
    device,
    bf16: bool = False,
    all_dense: bool = False,
    seed: int = 0,
) -> list[dict]:
    """Measure one configuration -> one row per implementation measured."""
    import torch

    spec = CONFIGS[name]
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(spec["batch"], *spec["input"], generator=generator).to(device)
    labels = torch.randint(0, 10, (spec["batch"],), generator=generator).to(device)
    prepare = None
    if spec.get("augment") == "rescale":
        # As in training (ScaleLearner): uint8 batch -> seeded random rescale -> normalise.
        from scalelearn.data.rescale import random_rescale
        from scalelearn.train.module import AUGMENT_SCALE_RANGE

        images = torch.randint(0, 256, images.shape, generator=generator, dtype=torch.uint8)
        images = images.to(device)
        augment_generator = torch.Generator(device=device).manual_seed(seed)

        def prepare(batch):
            batch = random_rescale(batch, AUGMENT_SCALE_RANGE, augment_generator)[0]
            return (batch.float() / 255.0 - 0.5) / 0.25

    skip_dense = spec.get("slow_dense", False) and device.type == "cpu" and not all_dense
    plans = {"fast": steps, "dense": 0 if skip_dense else min(steps, dense_steps)}
    skip_reason = "dense takes minutes per step on CPU" if skip_dense else "--dense-steps 0"
    steppers, state = {}, None
    for implementation in IMPLEMENTATIONS:
        model, stepper = _trainer(spec["model"], implementation, state, device, bf16)
        state = model.state_dict() if state is None else state
        steppers[implementation] = stepper

    def timed(implementation: str) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        steppers[implementation](prepare(images) if prepare else images, labels)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {impl: [] for impl in IMPLEMENTATIONS}
    peaks: dict[str, float | None] = {impl: None for impl in IMPLEMENTATIONS}
    active = [impl for impl in IMPLEMENTATIONS if plans[impl] > 0]
    for _ in range(warmup):
        for implementation in active:
            timed(implementation)
    # Alternate the implementations step by step. The first measured step of each also records its
    # peak memory; the median step time keeps that step's sampling thread out of the result.
    for i in range(max(plans.values())):
        for implementation in active:
            if i >= plans[implementation]:
                continue
            if i == 0:
                with _PeakMemory(device) as memory:
                    times[implementation].append(timed(implementation))
                peaks[implementation] = memory.peak_mib
            else:
                times[implementation].append(timed(implementation))

    rows = []
    for implementation in IMPLEMENTATIONS:
        measured = times[implementation]
        median = statistics.median(measured) if measured else None
        rows.append(
            {
                "config": name,
                "implementation": implementation,
                "device": str(device),
                "bf16": bf16,
                "batch": spec["batch"],
                "steps": len(measured),
                "step_s_median": median,
                "step_s_min": min(measured) if measured else None,
                "images_per_s": spec["batch"] / median if median else None,
                "peak_mib": peaks[implementation],
                "skipped": None if measured else skip_reason,
            }
        )
    fast, dense = rows
    ratio = None
    if fast["step_s_median"] and dense["step_s_median"]:
        ratio = dense["step_s_median"] / fast["step_s_median"]
    for row in rows:
        row["speedup"] = ratio
    return rows


def _format_table(rows: list[dict], memory_kind: str) -> str:
    header = (
        f"{'config':<16} {'impl':<6} {'steps':>5} {'s/step':>8} {'img/s':>8} "
        f"{'speedup':>8} {'peak MiB':>9}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        name = f"{row['config']:<16} {row['implementation']:<6}"
        if row["skipped"]:
            lines.append(f"{name} skipped: {row['skipped']}")
            continue
        fast = row["implementation"] == "fast"
        speedup = f"{row['speedup']:.1f}x" if row["speedup"] and fast else ""
        peak = f"{row['peak_mib']:.0f}" if row["peak_mib"] is not None else "n/a"
        lines.append(
            f"{name} {row['steps']:>5} "
            f"{row['step_s_median']:>8.3f} {row['images_per_s']:>8.1f} {speedup:>8} {peak:>9}"
        )
    lines.append(
        "s/step: median over the measured steps (forward, loss, backward, Adam step); "
        "speedup: dense s/step / fast s/step"
    )
    lines.append(f"peak MiB: {memory_kind}")
    return "\n".join(lines)


def _device(choice: str):
    import torch

    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ScalelearnError("--device cuda, but torch sees no CUDA device; use --device cpu")
    return torch.device(choice)


def run(args: argparse.Namespace) -> None:
    import torch

    # As in training (scalelearn.train.run): both implementations measured under it.
    reuse_freed_memory()
    names = args.config or list(DEFAULT_CONFIGS)
    unknown = [name for name in names if name not in CONFIGS]
    if unknown:
        raise ScalelearnError(
            f"unknown --config {', '.join(unknown)}; choose from {', '.join(CONFIGS)}"
        )
    if args.steps < 1 or args.dense_steps < 0 or args.warmup < 0:
        raise ScalelearnError("need --steps >= 1, --dense-steps >= 0 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    if args.bf16 and device.type != "cuda":
        raise ScalelearnError("--bf16 needs a CUDA device (bfloat16 autocast is timed on GPU only)")
    rows = []
    for name in names:
        rows += bench_config(
            name, args.steps, args.dense_steps, args.warmup, device, args.bf16, args.all_dense
        )
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    memory_kind = (
        "torch.cuda.max_memory_allocated above the level before the first measured step"
        if device.type == "cuda"
        else "malloc's allocated bytes above the level before the first measured step "
        "(sampled every 2 ms)"
    )
    print(f"device {device}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    print(_format_table(rows, memory_kind))


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="training throughput of the fast vs the dense scale-equivariant layers",
        description=(
            "Train the fast and the dense implementation of the same model side by side on a "
            "seeded random batch and print images/s, their ratio and peak memory. Configs: "
            + "; ".join(f"{name}: {spec['about']}" for name, spec in CONFIGS.items())
            + "."
        ),
    )
    parser.add_argument(
        "--config",
        action="append",
        metavar="NAME",
        help=f"configuration to measure (repeatable; default: {', '.join(DEFAULT_CONFIGS)})",
    )
    parser.add_argument(
        "--steps", type=positive_int, default=8, help="measured fast steps (default 8)"
    )
    parser.add_argument(
        "--dense-steps",
        type=non_negative_int,
        default=2,
        help="measured dense steps, at most --steps (default 2: dense is slow on CPU)",
    )
    parser.add_argument(
        "--warmup",
        type=non_negative_int,
        default=1,
        help="unmeasured steps of each first (default 1)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA only)")
    parser.add_argument(
        "--all-dense",
        action="store_true",
        help="also time dense where it takes minutes per step on CPU (e1_toy_isr7.56, e3_*)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list of dicts instead")
    parser.set_defaults(func=run)
