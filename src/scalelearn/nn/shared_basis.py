"""One network's basis: its InternalScales and its HermiteBasis, evaluated once per forward pass.

Every scale-equivariant layer of a network holds the same SharedBasis (passed at construction) and
calls it in its own `forward`; the first layer to ask computes the ScaleBasis, the others get the
same object. That keeps the layers self-contained (`forward(x)`, usable in `nn.Sequential`) and
the basis computed once per pass, with one autograd graph from every layer back to the scales.

When the cached basis is stale (a new one is computed instead):
- a tensor of the scales or of the basis buffers changed: another object (`functional_call`,
  `load_state_dict(assign=True)`), or modified in place (optimiser step, `constrain_`,
  `load_state_dict`), which the tensor's version counter shows; or its `requires_grad` flipped;
- the grad mode or inference mode differs from the one it was computed under (a basis computed
  under `no_grad` has no graph to the scales);
- a backward pass went through it: its graph is freed then (unless `retain_graph`), so the next
  forward pass must build a new one. A hook on the basis tensor marks it stale when its gradient
  is computed. Two forward passes before one backward pass share one basis and one graph, and
  the gradients of both reach the scales;
- the module was moved or cast (`.to`, `.double`, `.cuda`).
Under `no_grad` with unchanged scales (evaluation), one basis serves every batch.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn

from scalelearn.nn.hermite import HermiteBasis, ScaleBasis, kernel_size
from scalelearn.nn.scales import InternalScales


def _format_scales(scales: Tensor) -> str:
    return "[" + ", ".join(f"{float(s):.4g}" for s in scales) + "]"


class SharedBasis(nn.Module):
    """The basis at the current internal scales, shared by the layers of one network.

    internal_scales: the network's InternalScales (its learnable parameters live there).
    hermite: the HermiteBasis (basis type, effective size, k, sub-sigma factor, max order).
    Calling it returns the ScaleBasis (profiles [S, P, K]) of the current scales.
    """

    def __init__(self, internal_scales: InternalScales, hermite: HermiteBasis):
        super().__init__()
        self.internal_scales = internal_scales
        self.hermite = hermite
        self._cached: ScaleBasis | None = None
        self._cache_key: tuple = ()
        self._cache_serial = 0  # identifies the cached basis to its backward hook

    @property
    def num_functions(self) -> int:
        """F, the number of basis functions (the last axis of every layer's weight)."""
        return self.hermite.num_functions

    @property
    def num_scales(self) -> int:
        return self.internal_scales.num_scales

    def _key(self) -> tuple:
        """What the cached basis depends on besides the values inside its tensors."""
        tensors = [*self.internal_scales.parameters(), *self.internal_scales.buffers()]
        tensors += list(self.hermite.buffers())
        state = tuple((t, t._version, t.requires_grad) for t in tensors)
        return (torch.is_grad_enabled(), torch.is_inference_mode_enabled(), state)

    def _is_cached(self, key: tuple) -> bool:
        if self._cached is None or len(key[2]) != len(self._cache_key[2]):
            return False
        if key[:2] != self._cache_key[:2]:
            return False
        # Tensors compare by identity (the key holds them, so an id cannot be reused).
        return all(
            a is b and va == vb and ga == gb
            for (a, va, ga), (b, vb, gb) in zip(key[2], self._cache_key[2], strict=True)
        )

    def forward(self) -> ScaleBasis:
        """-> the ScaleBasis of the current scales (the cached one while it is still valid)."""
        key = self._key()
        if self._is_cached(key):
            return self._cached
        basis = self.hermite(self.internal_scales())
        self._cache_serial += 1
        if basis.profiles.requires_grad:
            basis.profiles.register_hook(_forget_after_backward(self, self._cache_serial))
        self._cached, self._cache_key = basis, key
        return basis

    def clear_cache(self) -> None:
        """Forget the cached basis (the next call computes it again)."""
        self._cached, self._cache_key = None, ()

    def _apply(self, fn, recurse=True):
        # .to() / .double() / .cuda() may swap a tensor's storage without touching its version.
        self.clear_cache()
        return super()._apply(fn, recurse)

    def __getstate__(self):
        # deepcopy and pickle: the cached basis may be a non-leaf tensor of a live graph.
        state = super().__getstate__().copy()
        state["_cached"], state["_cache_key"] = None, ()
        return state

    def extra_repr(self) -> str:
        with torch.no_grad():
            scales = self.internal_scales().detach()
        isr = float(scales.max() / scales.min())
        size = kernel_size(scales, self.hermite.kernel_size_k)
        return f"scales={_format_scales(scales)}, ISR={isr:.4g}, K={size}"


def _forget_after_backward(owner: SharedBasis, serial: int):
    """A gradient hook that drops `owner`'s cache if it still holds basis number `serial`.

    It holds the owner weakly: the cached tensor holds the hook, and the hook must not keep the
    module (and with it the cache) alive.
    """
    owner_ref = weakref.ref(owner)

    def hook(grad: Tensor) -> None:
        module = owner_ref()
        if module is not None and module._cache_serial == serial:
            module.clear_cache()

    return hook
