"""Fixtures shared by several test files."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread (two threads on a loaded 2-core machine were 100× slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fresh_determinism(monkeypatch):
    """torch's determinism settings as a process starts (deterministic algorithms off, the NaN
    fill of new tensors on), restored after the test: it checks what the code under test sets."""
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    monkeypatch.setattr(torch.utils.deterministic, "fill_uninitialized_memory", True)
    torch.use_deterministic_algorithms(False)
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


@pytest.fixture
def kill_after_epoch(monkeypatch):
    """kill(epoch): the next train_run raises RuntimeError("killed") right after that epoch's
    checkpoint and metrics row; returns undo(), which restores normal training."""
    from scalelearn.train import run as run_module

    record = run_module.EpochRecorder.on_train_epoch_end

    def kill(epoch: int):
        def record_then_die(self, trainer, module):
            record(self, trainer, module)
            if trainer.current_epoch == epoch:
                raise RuntimeError("killed")

        monkeypatch.setattr(run_module.EpochRecorder, "on_train_epoch_end", record_then_die)
        return lambda: monkeypatch.setattr(run_module.EpochRecorder, "on_train_epoch_end", record)

    return kill
