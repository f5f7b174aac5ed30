"""scalelearn.allocator: glibc keeps freed memory, and the allocated-bytes counter sees tensors."""

from __future__ import annotations

import sys

import pytest
import torch

from scalelearn import allocator

linux_glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or allocator.allocated_bytes() is None,
    reason="needs glibc >= 2.33",
)


@linux_glibc
def test_reuse_applies_and_allocated_bytes_follow_tensors():
    assert allocator.reuse_freed_memory()
    before = allocator.allocated_bytes()
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB
    during = allocator.allocated_bytes()
    del block
    after = allocator.allocated_bytes()
    assert during - before >= 60 * 2**20
    assert during - after >= 60 * 2**20
