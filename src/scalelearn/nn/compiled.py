"""torch.compile for the part of a GPU forward pass that is many small elementwise kernels.

After the toy model's lifting, a pass on CUDA is a chain of memory-bound kernels over
[B, 16, S, H, W] and [B, 16, H, W] (scale max, ReLU, BatchNorm, pool) whose training backward
includes cuDNN's BatchNorm kernel, slow for 16 channels of 3.6 M values each. Inductor fuses the
chain: H100, batch 128, fast steps under training's determinism settings: 34 -> 19 ms
(`e1_toy_isr7.56`), 22 -> 15 ms (`e2_toy`); evaluation passes gain too (README "GPU"). On the CPU
the eager ops were as fast in whole training steps on real digits, so only CUDA tensors take the
compiled path. The numbers differ from eager ones at rounding level (fused arithmetic), and are
the same from run to run.

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
    """`fn(x, *args)` compiled by torch.compile where `x` is on a device in `devices`, else `fn`
    itself. Call `compiles(x)` to ask which. dynamic: torch.compile's; False (static shapes) makes
    one graph per input shape, grad mode and value of a bool argument; None makes the sizes that
    change dynamic after their first change (one more graph, then none)."""

    devices: tuple[str, ...] = ("cuda",)

    def __init__(self, fn, dynamic: bool | None = False):
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.dynamic = dynamic
        self.compiled = None
        self.failed = False

    def compiles(self, x: torch.Tensor) -> bool:
        return not self.failed and os.environ.get(ENV, "1") != "0" and x.device.type in self.devices

    def __call__(self, x: torch.Tensor, *args):
        if not self.compiles(x):
            return self.fn(x, *args)
        if self.compiled is None:
            self.compiled = torch.compile(self.fn, dynamic=self.dynamic)
        try:
            return self.compiled(x, *args)
        except Exception as error:
            # Imported here: torch._dynamo takes seconds to import, and torch.compile has by now.
            from torch._dynamo.exc import TorchDynamoException

            if not isinstance(error, TorchDynamoException):
                raise  # the step's own error
            # Compilation failed, before anything of the pass ran: run it eagerly, now and on.
            self.failed = True
            warnings.warn(
                f"torch.compile failed ({type(error).__name__}: {str(error)[:300]}); the run "
                f"continues with eager PyTorch. Set {ENV}=0 to skip compiling.",
                stacklevel=2,
            )
            return self.fn(x, *args)
