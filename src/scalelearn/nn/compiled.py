"""torch.compile for the part of a GPU training step that is many small elementwise kernels.

After the toy model's lifting, a training step on CUDA is a chain of memory-bound kernels over
[B, 16, S, H, W] and [B, 16, H, W] (scale max, ReLU, BatchNorm, pool) whose backward includes
cuDNN's BatchNorm kernel, slow for 16 channels of 3.6 M values each. Inductor fuses the chain:
H100, batch 128, fast steps under training's determinism settings: 34 -> 19 ms (`e1_toy_isr7.56`),
22 -> 15 ms (`e2_toy`). On the CPU the eager ops were as fast in whole training steps on real
digits, so only CUDA tensors take the compiled path. The numbers differ from eager ones at
rounding level (fused arithmetic), and are the same from run to run.

SCALELEARN_COMPILE=0 in the environment turns it off. Where compilation fails (no Triton, no
C++ compiler), the eager function runs instead, after one warning.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

ENV = "SCALELEARN_COMPILE"


class CompiledOnCuda:
    """`fn(x, *args)` compiled by torch.compile (static shapes) where `x` is on a device in
    `devices` and autograd records, else `fn` itself. Call `compiles(x)` to ask which."""

    devices: tuple[str, ...] = ("cuda",)

    def __init__(self, fn):
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.compiled = None
        self.failed = False

    def compiles(self, x: torch.Tensor) -> bool:
        return (
            not self.failed
            and os.environ.get(ENV, "1") != "0"
            and x.device.type in self.devices
            and torch.is_grad_enabled()
        )

    def __call__(self, x: torch.Tensor, *args):
        if not self.compiles(x):
            return self.fn(x, *args)
        if self.compiled is None:
            self.compiled = torch.compile(self.fn, dynamic=False)
        try:
            return self.compiled(x, *args)
        except Exception as error:
            # Imported here: torch._dynamo takes seconds to import, and torch.compile has by now.
            from torch._dynamo.exc import TorchDynamoException

            if not isinstance(error, TorchDynamoException):
                raise  # the step's own error
            # Compilation failed, before anything of the step ran: run it eagerly, now and on.
            self.failed = True
            warnings.warn(
                f"torch.compile failed ({type(error).__name__}: {str(error)[:300]}); training "
                f"continues with eager PyTorch. Set {ENV}=0 to skip compiling.",
                stacklevel=2,
            )
            return self.fn(x, *args)
