"""Where a real training run's batches go: `scalelearn train` of a run config in this process,
with torch.profiler over BATCHES training batches of the second epoch. Prints the window's wall
time per batch against the device's busy time per batch (the sum of its kernels and copies), the
CPU operations that wait for the device (synchronisations, scalar reads) and the top operations
by device and by CPU time. Used for README "GPU" (the loop).

    python scripts/gpu_loop_profile.py RUN_CONFIG OUT_DIR [BATCHES]   (any device)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from scalelearn.train.run import train_run

run_config_path, out_dir = sys.argv[1], sys.argv[2]
BATCHES = int(sys.argv[3]) if len(sys.argv) > 3 else 20
FIRST = 5  # the window starts at this batch of epoch 1 (the second)
WAITS = (
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
    "aten::_local_scalar_dense",
    "cudaMemcpyAsync",
    "cudaEventSynchronize",
)


class Window(pl.Callback):
    """torch.profiler from batch FIRST to FIRST + BATCHES - 1 of epoch 1."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx: int) -> None:
        if trainer.current_epoch == 1 and batch_idx == FIRST:
            self.synchronize(module)
            activities = [ProfilerActivity.CPU]
            if module.device.type == "cuda":
                activities.append(ProfilerActivity.CUDA)
            self.profiler = profile(activities=activities)
            self.profiler.__enter__()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        if trainer.current_epoch == 1 and batch_idx == FIRST + BATCHES - 1:
            self.synchronize(module)
            wall = time.perf_counter() - self.start
            self.profiler.__exit__(None, None, None)
            report(self.profiler, wall)

    @staticmethod
    def synchronize(module) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)


def report(profiler, wall: float) -> None:
    events = profiler.key_averages()
    # The device's own events (kernels, copies, sets), as the table's "Self CUDA time total"
    # counts them: not the ranges of user annotations (Optimizer.step), which span many kernels.
    busy = sum(
        e.self_device_time_total
        for e in events
        if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
    )
    busy /= 1e6  # µs -> s
    print(
        f"== window: {BATCHES} batches, wall {wall / BATCHES * 1e3:.2f} ms per batch, device "
        f"busy {busy / BATCHES * 1e3:.2f} ms per batch ({100 * busy / wall:.0f} %)"
    )
    for event in events:
        if event.key in WAITS:
            print(
                f"== waits: {event.key}: {event.count / BATCHES:.1f} per batch, CPU "
                f"{event.cpu_time_total / BATCHES / 1e3:.2f} ms per batch"
            )
    print(events.table(sort_by="self_device_time_total", row_limit=15, max_name_column_width=60))
    print(events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
    sys.stdout.flush()


class ProfiledTrainer(pl.Trainer):
    def __init__(self, *args, callbacks=None, **kwargs):
        super().__init__(*args, callbacks=[*(callbacks or []), Window()], **kwargs)


pl.Trainer = ProfiledTrainer  # train_run builds `pl.Trainer(...)`
train_run(json.loads(Path(run_config_path).read_text()), out_dir)
