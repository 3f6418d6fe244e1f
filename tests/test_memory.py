"""The memory estimate (attn_cli/memory.py) counts what a run allocates: on small inputs the
buffers it counts cover the peak that tracemalloc sees (numpy reports its arrays to it) without
being far above it; a run past the machine's memory is refused with one line naming its size and
what keeps it small. The peak RSS at 5,000-20,000 tokens is measured in benchmarks/run.py (row
memory_estimate), not here."""

from __future__ import annotations

import tracemalloc

import pytest

import attn_cli
from attn_cli import memory
from attn_cli.errors import InputError
from tests.conftest import ROOT, invoke

GIB = 2**30


def peak_of(run) -> int:
    """Bytes allocated at the peak of `run()`, beyond what was held before it."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        run()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def counted(need: int) -> int:
    """The buffers an estimate counts, without its slack for uncounted small arrays."""
    return int((need - memory.SMALL) / memory.SLACK)


@pytest.fixture
def recorded(monkeypatch):
    """Each check's `need` (bytes beyond what the process holds), as the run passes it."""
    needs: list[int] = []
    check = memory.check_fits
    monkeypatch.setattr(
        memory, "check_fits", lambda need, *a: (needs.append(need), check(need, *a))
    )
    return needs


@pytest.mark.parametrize("float32_from", [None, 1000])
def test_toy_estimate_covers_the_peak_of_explain_and_its_json(
    tmp_path, recorded, monkeypatch, float32_from
):
    if float32_from is not None:
        monkeypatch.setattr("attn_cli.pipelines.FLOAT32_FROM", float32_from)
    text = "word " * 1500
    out = tmp_path / "t.json"
    peak = peak_of(lambda: invoke(["explain", text, "--json", str(out)]))
    assert out.stat().st_size > 0
    (need,) = recorded
    n, itemsize = 1500, 8 if float32_from is None else 4
    assert need == memory.toy_bytes(n, 384, itemsize, False)
    assert n * n * itemsize * 2 < peak <= counted(need)  # W_raw and W at least
    assert counted(need) <= 1.25 * peak


def test_qkv_estimates_cover_the_peak(recorded):
    text = "word " * 400
    peak = peak_of(lambda: attn_cli.explain(text, qkv=True, heads=4, d_k=64, causal=True))
    projections, run = recorded
    assert projections == memory.projection_bytes(384, 4, 64)
    assert run == memory.qkv_bytes(400, 384, 4, 64, 64, 384, True, 1.0)
    # The projections exist before the attention is computed: both are held at the peak.
    assert 4 * 400 * 400 * 8 * 3 < peak <= counted(projections) + counted(run)
    assert counted(run) <= 1.5 * peak


def test_model_estimate_covers_the_peak(recorded):
    model = attn_cli.load_model(ROOT / "tests" / "fixtures" / "tiny_llama")
    text = " ".join(["hello world"] * 150)
    peak = peak_of(lambda: model.trace(text, layers="all", heads="all"))
    (need,) = recorded
    assert peak <= counted(need)


def test_estimates_grow_with_what_the_run_holds():
    """Hand-counted: 20,000 float32 tokens hold W_raw and W (2 × n² × 4 bytes) and, after the
    compute, check_finite's n² booleans or a 256-row block of JSON text (up to 16 characters a
    number, five copies), whichever is larger; Kᵀ, X and Y in float32 are n × d each."""
    n, d = 20_000, 384
    buffers = 2 * n * n * 4 + max(n * n, 256 * n * 16 * 5) + 3 * 4 * n * d
    assert memory.toy_bytes(n, d, 4, False) == int(buffers * memory.SLACK) + memory.SMALL
    assert memory.toy_bytes(n, d, 4, True) - memory.toy_bytes(n, d, 4, False) == pytest.approx(
        n * n * 4 * memory.SLACK, abs=1
    )
    # One more kept kind of step per layer is one more H × n × n float32 stack per kept layer.
    base = memory.model_bytes(1000, 9, 30, 1, 30, 0, False)
    assert memory.model_bytes(1000, 9, 30, 2, 30, 0, False) - base == pytest.approx(
        30 * 9 * 1000 * 1000 * 4 * memory.SLACK, abs=1
    )


def test_refusal_names_the_size_and_what_keeps_it_small(monkeypatch):
    monkeypatch.setattr(memory, "total_memory", lambda: GIB)
    r = invoke(["explain", " ".join(["hi"] * 12000)])
    assert r.exit_code == 2
    line = r.stderr.strip()
    assert line.startswith("attn-cli: error: the text is 12,000 tokens: the run would need about ")
    assert line.endswith("more than 85% of this machine's 1.0 GiB; use a shorter text")
    with pytest.raises(InputError, match=r"use fewer heads or a smaller d_k \(heads, d_k\)"):
        attn_cli.explain("hi there", qkv=True, heads=16, d_k=65536)


@pytest.mark.parametrize("heads", ["16", "1024"])
def test_huge_projections_are_refused_before_they_are_drawn(monkeypatch, heads):
    """`--qkv --heads 16 --d-k 65536` grew to 6 GB and was killed; `--heads 1024` said
    'internal error: MemoryError'. W_q, W_k, W_v and W_o are d × H·d_k float64 each."""
    monkeypatch.setattr(memory, "total_memory", lambda: 16 * GIB)
    r = invoke(["explain", "hi there", "--qkv", "--heads", heads, "--d-k", "65536"])
    assert r.exit_code == 2
    assert f"{heads} heads of d_k 65536 over d = 384: the run would need about" in r.stderr
    assert "use fewer heads or a smaller d_k (--heads, --d-k) or a shorter text" in r.stderr
    assert r.stderr.count("\n") == 1


def test_model_refusal_names_layers_and_steps(monkeypatch):
    monkeypatch.setattr(memory, "total_memory", lambda: 2**20)
    model = attn_cli.load_model(ROOT / "tests" / "fixtures" / "tiny_llama")
    with pytest.raises(InputError, match=r"choose fewer layers \(layer\), fewer steps \(steps\)"):
        model.trace("hello world")


def test_total_memory_is_at_most_the_physical_memory():
    import os

    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < memory.total_memory() <= physical
    import mmap

    held = memory.resident_memory()
    # 64 MiB of fresh pages, touched: an anonymous map (malloc could hand back pages this
    # process already holds after earlier tests freed theirs, and the size would not move)
    big = mmap.mmap(-1, 64 * 2**20)
    big.write(b"\x01" * (64 * 2**20))
    assert memory.resident_memory() - held >= 60 * 2**20
    big.close()


def test_console_script_keeps_freed_buffers_for_reuse():
    """attn-cli's process lets glibc reuse freed weight buffers (memory.reuse_freed_memory):
    set where glibc is, a no-op elsewhere. In a child, so this process's allocator is left as
    it is."""
    import platform
    import subprocess
    import sys

    code = "from attn_cli.memory import reuse_freed_memory; print(reuse_freed_memory())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(platform.libc_ver()[0] == "glibc")


def test_a_huge_estimate_reads_as_a_number():
    """`--generate --max-length 10¹¹` on T5 (no position table) estimated ~1.6·10¹⁵ GiB,
    printed as '1630745828151703.0 GiB': large sizes get thousands separators."""
    assert memory.gib(2**30) == "1.0 GiB"
    assert memory.gib(1234567 * 2**30) == "1,234,567.0 GiB"
