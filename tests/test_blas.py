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


def busy(monkeypatch, load: float, now: float | None = None) -> None:
    """A machine whose 1-minute load average is `load` and whose other processes have `now`
    runnable threads at the moment (default: as many as the load)."""
    monkeypatch.setattr("os.getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(blas, "others_running", lambda: load if now is None else now)


def test_busy_machine_one_thread_then_restored(openblas, monkeypatch):
    busy(monkeypatch, 8.0)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    with blas.threads_for_free_cores():
        assert openblas() == 1
        a = np.arange(64.0).reshape(8, 8)
        assert (a @ a.T)[0, 0] == sum(x * x for x in range(8))  # BLAS still answers
    assert openblas() == 2


def test_idle_machine_keeps_its_threads(openblas, monkeypatch):
    busy(monkeypatch, 0.5)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    with blas.threads_for_free_cores():
        assert openblas() == 2
    assert openblas() == 2


def test_restored_after_an_error(openblas, monkeypatch):
    busy(monkeypatch, 8.0)
    with pytest.raises(ValueError), blas.threads_for_free_cores():
        raise ValueError
    assert openblas() == 2


@pytest.mark.parametrize(("load", "threads"), [(0.6, 1), (1.4, 1), (0.4, 2), (0.0, 2)])
def test_a_core_partly_in_use_is_not_free(openblas, monkeypatch, load, threads):
    """On 2 cores, a second thread only while the load is below 0.5: another process busy
    part of the time makes a spinning second thread cost more than it gains."""
    busy(monkeypatch, load)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    with blas.threads_for_free_cores():
        assert openblas() == threads
    assert openblas() == 2


def test_free_cores_of_a_larger_machine(monkeypatch):
    busy(monkeypatch, 3.2)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert blas.free_cores() == 5
    busy(monkeypatch, 30.0)
    assert blas.free_cores() == 1


@pytest.mark.parametrize(("load", "now", "threads"), [(0.9, 0.0, 2), (0.9, 0.75, 1), (0.2, 3.0, 2)])
def test_a_load_left_by_ended_processes_is_not_busy(openblas, monkeypatch, load, now, threads):
    """The load average still counts processes that ended (this program's previous run): with
    nothing else runnable now, both cores are free; a process running most of these
    milliseconds keeps one; and a burst now on a machine idle for a minute is not counted
    above the average."""
    busy(monkeypatch, load, now)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    with blas.threads_for_free_cores():
        assert openblas() == threads


def test_others_running_is_the_mean_of_other_processes_runnable_threads(monkeypatch):
    """Each sample: the machine's running threads less this process's own (at least itself,
    the one reading); the mean over the samples."""
    running = iter([1, 3, 2, 4, 1, 2, 3, 2])  # the machine, this process included
    own = iter([1, 1, 2, 3, 0, 1, 1, 2])  # ours: a spinning BLAS thread is not another process
    monkeypatch.setattr(blas, "_running_threads", lambda: next(running))
    monkeypatch.setattr(blas, "_own_running_threads", lambda: next(own))
    monkeypatch.setattr(blas, "SAMPLE_SECONDS", 0.0)
    assert blas.others_running() == (0 + 2 + 0 + 1 + 0 + 1 + 2 + 0) / 8
    monkeypatch.setattr(blas, "_running_threads", lambda: None)  # no /proc
    assert blas.others_running() is None


def test_this_process_reads_itself_as_running():
    assert blas._own_running_threads() >= 1
    assert (blas._running_threads() or 0) >= 1


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
