"""A model run uses at most one OpenBLAS thread per free core (attn_cli/blas.py): one while the
machine is busy, the thread count as it was on an idle machine."""

from __future__ import annotations

import subprocess
import sys

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
    with blas.threads_for_free_cores():
        assert openblas() == 1
        a = np.arange(64.0).reshape(8, 8)
        assert (a @ a.T)[0, 0] == sum(x * x for x in range(8))  # BLAS still answers
    assert openblas() == 2


def test_idle_machine_keeps_its_threads(openblas, monkeypatch):
    monkeypatch.setattr("os.getloadavg", lambda: (0.5, 0.5, 0.5))
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    with blas.threads_for_free_cores():
        assert openblas() == 2
    assert openblas() == 2


def test_restored_after_an_error(openblas, monkeypatch):
    monkeypatch.setattr("os.getloadavg", lambda: (8.0, 8.0, 8.0))
    with pytest.raises(ValueError), blas.threads_for_free_cores():
        raise ValueError
    assert openblas() == 2


@pytest.mark.parametrize(("load", "threads"), [(0.6, 1), (1.4, 1), (0.4, 2), (0.0, 2)])
def test_a_core_partly_in_use_is_not_free(openblas, monkeypatch, load, threads):
    """On 2 cores, a second thread only while the load is below 0.5: another process busy
    part of the time makes a spinning second thread cost more than it gains."""
    monkeypatch.setattr("os.getloadavg", lambda: (load, load, load))
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    with blas.threads_for_free_cores():
        assert openblas() == threads
    assert openblas() == 2


def test_free_cores_of_a_larger_machine(monkeypatch):
    monkeypatch.setattr("os.getloadavg", lambda: (3.2, 3.2, 3.2))
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert blas.free_cores() == 5
    monkeypatch.setattr("os.getloadavg", lambda: (30.0, 30.0, 30.0))
    assert blas.free_cores() == 1


def test_found_when_numpy_is_not_imported_yet(openblas):
    """A process that limits its threads before its first numpy import (the gpt-oss benchmark's
    child did) still finds numpy's OpenBLAS, instead of caching "none" and running on all of
    OpenBLAS's threads."""
    code = (
        "import sys; from attn_cli import blas; assert 'numpy' not in sys.modules; "
        "print(blas._openblas() is not None)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
