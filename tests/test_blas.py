"""A model run puts OpenBLAS on one thread and computes its large products in fixed pieces on
the free cores (attn_cli/blas.py): as fast as the free cores allow, and the same numbers
whatever the load."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from attn_cli import blas
from tests.conftest import minilm_dir


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


def busy(monkeypatch, load: float, now: float | None = None, cores: int = 2) -> None:
    """A machine of `cores` cores whose 1-minute load average is `load` and whose other
    processes have `now` runnable threads at the moment (default: as many as the load)."""
    monkeypatch.setattr("os.getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(blas, "others_running", lambda: load if now is None else now)
    monkeypatch.setattr("os.cpu_count", lambda: cores)


def test_a_run_puts_openblas_on_one_thread_and_restores_it(openblas, monkeypatch):
    busy(monkeypatch, 0.0)
    with blas.threads_for_free_cores():
        assert openblas() == 1
        assert blas._RUN.workers == 2
        a = np.arange(64.0).reshape(8, 8)
        assert (a @ a.T)[0, 0] == sum(x * x for x in range(8))  # BLAS still answers
    assert openblas() == 2 and blas._RUN.workers == 0


def test_no_more_workers_than_openblas_was_given(openblas, monkeypatch):
    """OPENBLAS_NUM_THREADS=1 (the corpus pool's workers, `--threads 1` benchmarks) keeps a
    run on one thread even on an idle machine."""
    busy(monkeypatch, 0.0)
    blas._openblas()[1](1)
    with blas.threads_for_free_cores():
        assert blas._RUN.workers == 1
    assert openblas() == 1


def test_restored_after_an_error(openblas, monkeypatch):
    busy(monkeypatch, 8.0)
    with pytest.raises(ValueError), blas.threads_for_free_cores():
        raise ValueError
    assert openblas() == 2 and blas._RUN.workers == 0


def test_an_inner_block_keeps_the_outer_choice(openblas, monkeypatch):
    busy(monkeypatch, 0.0)
    with blas.threads_for_free_cores():
        busy(monkeypatch, 8.0)
        with blas.threads_for_free_cores():
            assert blas._RUN.workers == 2
        assert blas._RUN.workers == 2 and openblas() == 1
    assert blas._RUN.workers == 0 and openblas() == 2


@pytest.mark.parametrize(("load", "workers"), [(0.6, 1), (1.4, 1), (8.0, 1), (0.4, 2), (0.0, 2)])
def test_a_core_partly_in_use_is_not_free(monkeypatch, load, workers):
    """On 2 cores, a second thread only while the load is below 0.5: another process busy
    part of the time makes a second thread cost more than it gains."""
    busy(monkeypatch, load)
    assert blas.free_cores() == workers


def test_free_cores_of_a_larger_machine(monkeypatch):
    busy(monkeypatch, 3.2, cores=8)
    assert blas.free_cores() == 5
    busy(monkeypatch, 30.0, cores=8)
    assert blas.free_cores() == 1


@pytest.mark.parametrize(("load", "now", "workers"), [(0.9, 0.0, 2), (0.9, 0.75, 1), (0.2, 3.0, 2)])
def test_a_load_left_by_ended_processes_is_not_busy(monkeypatch, load, now, workers):
    """The load average still counts processes that ended (this program's previous run): with
    nothing else runnable now, both cores are free; a process running most of these
    milliseconds keeps one; and a burst now on a machine idle for a minute is not counted
    above the average."""
    busy(monkeypatch, load, now)
    assert blas.free_cores() == workers


def test_others_running_is_the_mean_of_other_processes_runnable_threads(monkeypatch):
    counts = iter([3, 1, 2, 1, 1, 1, 1, 1])  # this process alone is 1 of them
    monkeypatch.setattr(blas, "_running_threads", lambda: next(counts))
    monkeypatch.setattr(blas, "_own_running_threads", lambda: 1)
    monkeypatch.setattr(blas, "SAMPLE_SECONDS", 0.0)
    assert blas.others_running() == pytest.approx((2 + 0 + 1) / 8)


def test_this_process_runnable_now_is_seen():
    assert blas._own_running_threads() >= 1  # the thread reading it is running
    running = blas._running_threads()
    assert running is None or running >= 1


@pytest.mark.parametrize("rows", [1, 23, 24, 47, 48, 97, 128, 502, 1500, 4096])
@pytest.mark.parametrize("pieces", [1, 2, 3, 8])
def test_row_cuts_cover_the_rows_on_aligned_places(rows, pieces):
    cuts = blas.row_cuts(rows, pieces)
    assert cuts[0] == 0 and cuts[-1] == rows
    assert all(a < b for a, b in zip(cuts, cuts[1:], strict=False))  # no empty piece
    assert all(c % blas.ROW_ALIGN == 0 for c in cuts[1:-1])
    assert len(cuts) - 1 == min(pieces, -(-rows // blas.ROW_ALIGN))
    sizes = np.diff(cuts)
    assert sizes.max() - sizes.min() <= 2 * blas.ROW_ALIGN  # near-equal


def test_row_cuts_by_hand():
    assert blas.row_cuts(128, 2) == [0, 72, 128]
    assert blas.row_cuts(1500, 2) == [0, 768, 1500]
    assert blas.row_cuts(40, 2) == [0, 24, 40]
    assert blas.row_cuts(20, 2) == [0, 20]


SHAPES = [
    ((128, 576), (576, 1536)),  # SmolLM2's MLP
    ((502, 384), (384, 1536)),  # MiniLM at 502 tokens
    ((97, 576), (576, 1536)),  # rows not a multiple of the alignment
    ((9, 128, 64), (9, 64, 128)),  # a stack of heads' scores
    ((12, 502, 502), (12, 502, 32)),  # a stack of W·V
]


@pytest.mark.parametrize(("a_shape", "b_shape"), SHAPES)
def test_pieces_give_the_same_numbers_on_one_free_core_or_two(
    openblas, monkeypatch, a_shape, b_shape
):
    """The numbers of a run must not follow the machine's load: the pieces are the same on one
    worker and on two, so the products are equal bit for bit, and equal to a @ b."""
    rng = np.random.default_rng(7)
    a = rng.standard_normal(a_shape, dtype=np.float32)
    b = rng.standard_normal(b_shape, dtype=np.float32)
    got = {}
    for load in (8.0, 0.0):  # one free core, then two
        busy(monkeypatch, load)
        with blas.threads_for_free_cores():
            got[blas._RUN.workers] = blas.matmul(a, b)
    assert set(got) == {1, 2}
    assert np.array_equal(got[1], got[2])
    np.testing.assert_allclose(got[1], a @ b, rtol=1e-5, atol=1e-4)


def test_a_transposed_weight_is_cut_the_same_way(openblas, monkeypatch):
    """Weights are often a transposed view ([out, in] stored, [in, out] used)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((128, 576), dtype=np.float32)
    w = rng.standard_normal((1536, 576), dtype=np.float32)
    got = []
    for load in (8.0, 0.0):
        busy(monkeypatch, load)
        with blas.threads_for_free_cores():
            got.append(blas.matmul(x, w.T))
    assert np.array_equal(got[0], got[1])
    np.testing.assert_allclose(got[0], x @ w.T, rtol=1e-5, atol=1e-4)


def test_outside_a_run_matmul_is_the_plain_product():
    a = np.arange(12.0).reshape(3, 4)
    b = np.arange(8.0).reshape(4, 2)
    assert blas._RUN.workers == 0
    assert np.array_equal(blas.matmul(a, b), a @ b)


def test_a_model_run_gives_the_same_maps_on_a_busy_and_an_idle_machine(openblas, monkeypatch):
    """The whole forward pass: MiniLM at 502 tokens, every map, once with one free core and once
    with two, equal bit for bit (OpenBLAS's own two threads made them differ by up to 1e-6)."""
    import attn_cli

    minilm_dir()
    model = attn_cli.load_model("minilm")
    text = " ".join(["the bank of the river"] * 100)
    maps = []
    for load in (8.0, 0.0):
        busy(monkeypatch, load)
        maps.append(model.trace(text).attention())
    assert maps[0].shape == (6, 12, 502, 502)
    assert np.array_equal(maps[0], maps[1])


def test_found_when_numpy_is_not_imported_yet():
    """A process that limits its threads before its first numpy import (the gpt-oss benchmark's
    child did) still finds numpy's OpenBLAS, instead of caching "none"."""
    code = (
        "import sys; assert 'numpy' not in sys.modules; from attn_cli import blas; "
        "print(blas._openblas() is not None)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_softmax_gives_the_same_numbers_on_one_free_core_or_two(openblas, monkeypatch):
    """The softmax runs in row pieces on the free cores: each row's numbers are its own."""
    from attn_cli.attention import row_softmax

    rng = np.random.default_rng(5)
    w = rng.standard_normal((4, 300, 300), dtype=np.float32) * 8
    w[1, 7] = -np.inf  # a fully masked row stays all zeros
    got = {}
    for load in (8.0, 0.0):
        busy(monkeypatch, load)
        with blas.threads_for_free_cores():
            inplace = w.copy()
            row_softmax(inplace, in_place=True)
            got[blas._RUN.workers] = (row_softmax(w), inplace)
    assert set(got) == {1, 2}
    for one, two in zip(got[1], got[2], strict=True):
        assert np.array_equal(one, two)
    p = got[2][0]
    assert np.array_equal(p, got[2][1])
    np.testing.assert_allclose(p.sum(-1)[np.arange(4) != 1], 1.0, rtol=1e-5)
    assert (p[1, 7] == 0).all() and np.isfinite(p).all()
    e = np.exp(w[0].astype(np.float64) - w[0].max(-1, keepdims=True))
    np.testing.assert_allclose(p[0], e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)


def test_a_forked_child_makes_its_own_pool(openblas, monkeypatch):
    """fork copies only the calling thread: after a run has made its pool, a forked child's run
    must not wait on the parent's threads (it would hang)."""
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    busy(monkeypatch, 0.0)
    a = np.ones((192, 256), dtype=np.float32)
    b = np.ones((256, 512), dtype=np.float32)
    with blas.threads_for_free_cores():
        assert blas._RUN.pool is not None and np.all(blas.matmul(a, b) == 256)
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_run_in_child, args=(a, b))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child's run hung on its parent's threads")
    assert child.exitcode == 0


def _run_in_child(a: np.ndarray, b: np.ndarray) -> None:
    with blas.threads_for_free_cores():
        assert blas._RUN.workers == 2
        assert np.all(blas.matmul(a, b) == 256)
