"""The A/B behind README "GPU" (evaluation): the toy model's evaluation passes (eval mode, chunked,
inference mode, bench's digit batch of 256) with the part after the lifting eager and compiled
(`models.TOY_EVAL_HEAD`, SCALELEARN_COMPILE=0/1), alternating in one process; then the largest
logit difference between the two.

    python scripts/gpu_eval_ab.py cuda e1_toy_isr7.56 e2_toy e3_toy_worst   (a dry run: cpu tiny)
"""

from __future__ import annotations

import functools
import os
import statistics
import sys

import torch

from scalelearn import bench
from scalelearn.nn.compiled import ENV
from scalelearn.nn.evaluation import ChunkedEvaluator
from scalelearn.nn.models import build_model

device = torch.device(sys.argv[1])
EVAL_BATCH, CALLS = (256, 5) if device.type == "cuda" else (4, 1)

for name in sys.argv[2:]:
    spec = bench._with_batches(bench.CONFIGS[name], 128, EVAL_BATCH)
    _, _, images, _ = bench._batches(spec, device, 0, "digits")
    torch.manual_seed(0)
    model = build_model({**spec["model"], "implementation": "fast"}).to(device).eval()
    evaluate = ChunkedEvaluator(model)
    times, logits = {"0": [], "1": []}, {}
    for mode in ("0", "1", "0", "1"):
        os.environ[ENV] = mode
        logits[mode] = evaluate(images)  # warm-up (compiles, the first time)
        call = functools.partial(evaluate, images)
        times[mode] += [bench._timed(call, device) for _ in range(CALLS)]
    eager, compiled = (statistics.median(times[mode]) for mode in ("0", "1"))
    difference = (logits["0"] - logits["1"]).abs().max().item()
    print(
        f"{name}: eval of {EVAL_BATCH} (chunk {evaluate.chunk(tuple(images.shape[1:]))}): eager "
        f"{eager * 1e3:.1f} ms = {EVAL_BATCH / eager:.0f} img/s, compiled {compiled * 1e3:.1f} ms "
        f"= {EVAL_BATCH / compiled:.0f} img/s ({eager / compiled:.2f}x); largest logit "
        f"difference {difference:.2e}",
        flush=True,
    )
