"""The A/B behind README "GPU" (1) and (2): toy and SESN training steps, in one process, with the
scale max's old backward (max(dim): a scatter, which CUDA's deterministic algorithms sort) and its
new one (`conv._ScaleMax`: a selection), eager and with the part after the lifting compiled
("tail": the toy model's modules after `conv`, what `nn.compiled.TOY_TRAINING_HEAD` now runs in
function form), without and with training's determinism settings; then torch.profiler's top
CUDA operators of the old deterministic eager step. Bench's digit batches at batch 128 on CUDA.

    python scripts/gpu_step_ab.py cuda e1_toy_isr7.56 e2_toy e5_sesn   (a dry run: cpu e2_toy)

The models are built with SCALELEARN_COMPILE=0, so "eager" is eager whatever the device.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from scalelearn import bench
from scalelearn.nn import conv
from scalelearn.nn.models import build_model
from scalelearn.train.run import training_determinism

os.environ["SCALELEARN_COMPILE"] = "0"
device = torch.device(sys.argv[1])
names = sys.argv[2:]
BATCH, STEPS = (128, 15) if device.type == "cuda" else (4, 2)
select_max = conv.scale_max_projection


def scatter_max(x):
    """The scale max before `_ScaleMax`: max(dim)'s own backward in training."""
    if torch.is_grad_enabled() and x.requires_grad:
        return x.max(dim=2).values
    return select_max(x)


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(work, count: int) -> float:
    times = []
    for _ in range(count):
        sync()
        start = time.perf_counter()
        work()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def stepper(spec, state, how, images, labels):
    model = build_model({**spec["model"], "implementation": "fast"}).to(device)
    model.load_state_dict(state)
    forward = model
    if how == "tail":
        tail = torch.compile(
            lambda z: model.fc(model._pool(model.bn(F.relu(model.projection(z)))).flatten(1)),
            dynamic=False,
        )

        def forward(x):
            return tail(model.conv(x))

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(forward(images), labels).backward()
        optimizer.step()
        if model.internal_scales is not None:
            model.internal_scales.constrain_()

    return step


for deterministic in (False, True):
    if deterministic:
        training_determinism(on_cpu=False)
    for name in names:
        spec = bench._with_batches(bench.CONFIGS[name], BATCH, 256)
        images, labels, _, _ = bench._batches(spec, device, 0, "digits")
        torch.manual_seed(0)
        state = build_model({**spec["model"], "implementation": "fast"}).state_dict()
        for how in ["eager", "tail"] if spec["model"]["name"] == "toy" else ["eager"]:
            for label, scale_max in (("scatter", scatter_max), ("select", select_max)):
                conv.scale_max_projection = scale_max
                step = stepper(spec, state, how, images, labels)
                for _ in range(3):
                    step()
                seconds = median_seconds(step, STEPS)
                print(
                    f"deterministic={deterministic} {name} {how} {label}: {seconds * 1e3:.2f} ms "
                    f"= {BATCH / seconds:.0f} img/s",
                    flush=True,
                )
                torch._dynamo.reset()

conv.scale_max_projection = scatter_max
from torch.profiler import ProfilerActivity, profile  # noqa: E402

spec = bench._with_batches(bench.CONFIGS[names[0]], BATCH, 256)
images, labels, _, _ = bench._batches(spec, device, 0, "digits")
state = build_model({**spec["model"], "implementation": "fast"}).state_dict()
step = stepper(spec, state, "eager", images, labels)
step()
step()
activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
with profile(activities=activities) as profiler:
    for _ in range(3):
        step()
    sync()
sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
print(profiler.key_averages().table(sort_by=sort, row_limit=15))
