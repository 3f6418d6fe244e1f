"""A model run uses one OpenBLAS thread while the machine is busy (attn_cli/blas.py) and leaves
the thread count alone otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from attn_cli import blas


@pytest.fixture
def openblas():
    found = blas._openblas()
    if found is None:
        pytest.skip("numpy is not linked with OpenBLAS here")
    get, set_ = found
    before = get()
    set_(2)  # as on a machine with two cores or more
    yield get
    set_(before)


def test_busy_machine_one_thread_then_restored(openblas, monkeypatch):
    monkeypatch.setattr("os.getloadavg", lambda: (8.0, 8.0, 8.0))
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    with blas.one_thread_when_busy():
        assert openblas() == 1
        a = np.arange(64.0).reshape(8, 8)
        assert (a @ a.T)[0, 0] == sum(x * x for x in range(8))  # BLAS still answers
    assert openblas() == 2


def test_idle_machine_keeps_its_threads(openblas, monkeypatch):
    monkeypatch.setattr("os.getloadavg", lambda: (0.5, 0.5, 0.5))
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    with blas.one_thread_when_busy():
        assert openblas() == 2
    assert openblas() == 2


def test_restored_after_an_error(openblas, monkeypatch):
    monkeypatch.setattr("os.getloadavg", lambda: (8.0, 8.0, 8.0))
    with pytest.raises(ValueError), blas.one_thread_when_busy():
        raise ValueError
    assert openblas() == 2
