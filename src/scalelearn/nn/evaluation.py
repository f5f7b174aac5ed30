"""Evaluation in bounded memory: a batch of any size goes through the network in chunks whose
working memory stays below a budget, without autograd, with every layer's kernel computed once.

Training batches are small, but evaluation batches (`train.eval_batch_size`, the per-scale test)
are large, and the scale-equivariant layers hold S·Cout maps per image plus their spectra: the toy
model at K 97 on a 168 canvas needs about 27 MB per image in one forward pass, 7 GB for a batch
of 256. The chunk size comes from the layer shapes (`images_per_chunk`), so the result is the same
function of the shapes on every run; the logits do not depend on it (every layer treats images
independently, batch norm uses its running statistics in eval mode).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from scalelearn.nn import fast_conv
from scalelearn.nn.conv import ScaleConvH2H, ScaleConvZ2H

# Working memory one evaluation forward pass may hold (bytes). Estimated at about twice the real
# peak; malloc keeps and reuses freed blocks (scalelearn.allocator: mapping every large block
# afresh made evaluation 3-4x slower), so its heap also holds some fragments. Measured at K 193
# (E3's worst case), 256 images, 2 threads: 1.1 GB resident with this budget, 1.9 GB with 1 GiB,
# at the same speed.
EVAL_MEMORY_BUDGET = 2**29
# On a GPU the budget is device memory: small chunks would leave it idle between kernel launches.
# A quarter of the card, at most 8 GiB, leaves room for a second job on the same GPU.
CUDA_EVAL_MEMORY_BUDGET = 2**33
# The layers choose their method by batch size: the estimate is made for a batch of this many.
_NOMINAL_BATCH = 32


def bytes_per_image(model: nn.Module, image_shape: tuple[int, ...]) -> int:
    """Estimated working memory of one image's forward pass (bytes), from a probe of one image.

    image_shape: [C, H, W]. Every leaf module counts its input and output; a scale-equivariant
    layer counts its input and `fast_conv.working_bytes` of the method it runs on a batch of
    _NOMINAL_BATCH, per image (an upper bound: the sum of all its intermediates, measured at
    about twice the real peak for the toy model). The largest module is the estimate.
    """
    largest = 0

    def record(module, args, output) -> None:
        nonlocal largest
        if not args or not isinstance(args[0], Tensor):  # InternalScales: no image input
            return
        x = args[0]
        if isinstance(module, (ScaleConvZ2H, ScaleConvH2H)):
            method = "direct" if module.implementation == "dense" else None
            batch = x.expand(_NOMINAL_BATCH, *x.shape[1:])
            working = fast_conv.working_bytes(batch, module.weight, module.basis(), method)
            working //= _NOMINAL_BATCH
        else:
            working = output.numel() * output.element_size() if isinstance(output, Tensor) else 0
        largest = max(largest, x.numel() * x.element_size() + working)

    # The layers hold their SharedBasis as a child, so they are not leaves: hook them too.
    leaves = [
        m
        for m in model.modules()
        if not list(m.children()) or isinstance(m, (ScaleConvZ2H, ScaleConvH2H))
    ]
    hooks = [m.register_forward_hook(record) for m in leaves]
    parameter = next(model.parameters())
    probe = torch.zeros(1, *image_shape, dtype=parameter.dtype, device=parameter.device)
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            model(probe)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return largest


def memory_budget(
    device: torch.device,
    cpu_budget: int = EVAL_MEMORY_BUDGET,
    cuda_budget: int = CUDA_EVAL_MEMORY_BUDGET,
) -> int:
    """A working-memory budget (bytes) on `device`: `cpu_budget` on the CPU; on CUDA a quarter of
    the GPU's memory, at most `cuda_budget`."""
    if device.type != "cuda":
        return cpu_budget
    total = torch.cuda.get_device_properties(device).total_memory
    return min(cuda_budget, total // 4)


def images_per_chunk(
    model: nn.Module, image_shape: tuple[int, ...], budget: int | None = None
) -> int:
    """How many images one evaluation forward pass takes so its memory stays within `budget`
    (default: `memory_budget` of the model's device)."""
    if budget is None:
        budget = memory_budget(next(model.parameters()).device)
    return max(1, budget // max(1, bytes_per_image(model, image_shape)))


class ChunkedEvaluator:
    """Logits of a model in eval mode for batches of any size, in chunks of `chunk` images.

    The chunk size is computed once per image shape (`images_per_chunk`); call in eval mode.
    """

    def __init__(self, model: nn.Module, budget: int | None = None):
        self.model = model
        self.budget = budget
        self._chunks: dict[tuple[int, ...], int] = {}

    def chunk(self, image_shape: tuple[int, ...]) -> int:
        if image_shape not in self._chunks:
            self._chunks[image_shape] = images_per_chunk(self.model, image_shape, self.budget)
        return self._chunks[image_shape]

    def __call__(self, x: Tensor) -> Tensor:
        """x [B, C, H, W] (normalised) -> logits [B, classes], without autograd."""
        return evaluate_logits(self.model, x, self.chunk(tuple(x.shape[1:])))


def evaluate_logits(model: nn.Module, x: Tensor, chunk: int) -> Tensor:
    """model(x) computed `chunk` images at a time under inference_mode, each layer's kernel
    computed once for all chunks: x [B, ...] -> logits [B, classes]."""
    with torch.inference_mode(), fast_conv.reuse_kernels():
        return torch.cat([model(x[start : start + chunk]) for start in range(0, len(x), chunk)])
