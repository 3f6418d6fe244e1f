"""Corpus statistics of every head (Clark et al. 2019, "What Does BERT Look At?").

Every line of a file is tokenized (special tokens added) and run through the model; for each
layer × head we average, over every token of every line (token-weighted):

    to_first   attention to the first token ([CLS] in BERT)
    to_sep     attention to the special tokens after the first ([SEP], end-of-text)
    to_punct   attention to punctuation tokens
    to_prev    attention to the previous token   (tokens that have one)
    to_next    attention to the next token       (tokens that have one)
    to_self    attention to itself
    entropy    entropy of the attention row, in nats

Lines run in worker processes (every core by default) or on a Dask cluster (cluster.py); each
worker loads the model once and returns sums and counts per chunk of lines, so memory does not
grow with the file. Chunk sums are merged exactly (corpus_ledger.py): every way of running,
resumed or not, gives the same numbers. A progress bar (with the rate and the time left) is
drawn on stderr only when stderr is a terminal.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from attn_cli.errors import AttnError, InputError, opt
from attn_cli.inputs import read_lines
from attn_cli.methods.cluster import run_batches
from attn_cli.methods.corpus_ledger import Ledger, lines_digest
from attn_cli.methods.corpus_lines import (
    Totals,
    chunk_totals,
    model_runner,
)
from attn_cli.methods.detectors import heads_step
from attn_cli.pretrained import load_model
from attn_cli.progress import Progress
from attn_cli.trace import HEADS, Trace, TraceStep

_WORKER: dict[str, Any] = {}


def _init_worker(model: str, max_tokens: int | None) -> None:
    # An error here would print a traceback per worker and break the pool: it is kept, and
    # every chunk raises it instead, which reaches the parent as one InputError.
    try:
        _WORKER["run"] = model_runner(model, max_tokens)
    except InputError as exc:
        _WORKER["error"] = exc


def _work(lines: list[str]) -> Totals:
    if "error" in _WORKER:
        raise _WORKER["error"]
    return chunk_totals(_WORKER["run"], lines)


def _chunks(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for line in lines:
        chunk.append(line.rstrip("\r\n"))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def corpus_statistics(
    lines: Iterable[str],
    model: str,
    workers: int | None = None,
    chunk_size: int = 8,
    max_tokens: int | None = None,
    total_lines: int | None = None,
    progress: bool | Callable[[int], None] | None = None,
    scheduler: str | None = None,
    resume: str | Path | None = None,
    input_digest: str | None = None,
    checkpoint_every: int = 20,
) -> Totals:
    """Run every line through `model` and sum the statistics. workers=None: every core;
    workers=1 runs in this process. progress=None: a bar when stderr is a terminal;
    a callable: called with the number of lines done after each chunk (e.g. a caller's bar).

    scheduler: the address of a Dask scheduler ('tcp://host:8786'): chunks go to its workers
    instead (pip install 'attn-cli[cluster]'). resume: a file for the partial sums, saved every
    `checkpoint_every` chunks; a run given the same file skips the chunks it holds. It is
    refused for other input (input_digest; computed here when `lines` is a list).
    Chunks are merged exactly: every way of running gives the same numbers.

    Workers are spawned, as with any multiprocessing: a script that calls this with several
    workers needs the usual `if __name__ == "__main__":` guard (notebooks and the CLI do not)."""

    n_workers = max(1, (os.cpu_count() or 1) if workers is None else workers)
    if resume is not None and input_digest is None:
        if not isinstance(lines, Sequence):
            raise InputError(
                f"{opt('resume')} needs input_digest= when the lines are read as they come"
            )
        input_digest = lines_digest(lines)
    identity = {
        "model": model,
        "max_tokens": max_tokens,
        "batch_size": chunk_size,
        "input": input_digest,
    }
    ledger = Ledger.open(identity, None if resume is None else Path(resume), checkpoint_every)
    with Progress("heads", total=total_lines, unit="sentences") as bar:
        if progress is not None and not callable(progress):
            bar.on = progress
        bar.phase(Path(model).name or model)  # short: the rate and time left must fit

        def done(index: int, count: int, sums: Totals) -> None:
            ledger.record(index, sums)
            bar.advance(count)
            if callable(progress):
                progress(count)

        batches = ledger.todo(_chunks(lines, chunk_size), skip=bar.skip)
        try:
            if scheduler is not None:
                run_batches(batches, model, max_tokens, scheduler, done)
            else:
                _run_lines(batches, model, n_workers, max_tokens, done)
        finally:  # finished or interrupted: what is done is kept
            ledger.save()
    return Totals(ledger.rounded_sums(), ledger.counts, ledger.lines, ledger.tokens, ledger.skipped)


def _run_lines(
    batches: Iterable[tuple[int, list[str]]],
    model: str,
    n_workers: int,
    max_tokens: int | None,
    done: Callable[[int, int, Totals], None],
) -> None:
    if n_workers == 1:
        run = model_runner(model, max_tokens)
        for index, chunk in batches:
            done(index, len(chunk), chunk_totals(run, chunk))
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    # A --model that does not resolve or load is reported at once, in one line, not by
    # every worker (weights are memory-mapped: loading checks them without reading them all).
    load_model(model)

    # spawn: a fresh interpreter per worker (forking a process that already runs BLAS
    # threads can deadlock). At most 2 chunks per worker in flight: memory stays flat.
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        n_workers, mp_context=ctx, initializer=_init_worker, initargs=(model, max_tokens)
    )
    try:
        with _single_threaded_blas():  # workers are spawned at the first submits
            pending: dict[Future[Totals], tuple[int, int]] = {}
            for index, chunk in batches:
                if len(pending) >= 2 * n_workers:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for f in finished:
                        done(*pending.pop(f), f.result())
                pending[pool.submit(_work, chunk)] = (index, len(chunk))
            for f in list(pending):
                done(*pending.pop(f), f.result())
    except BrokenProcessPool:
        _stop(pool)
        raise AttnError(
            "a worker process died (out of memory?): try fewer workers (--workers)", 1
        ) from None
    except BaseException:  # an error, Ctrl-C or SIGTERM: no worker outlives the run
        _stop(pool)
        raise
    pool.shutdown()


def _stop(pool: Any) -> None:
    """End a pool's workers now, not after their current chunk (shutdown() waits for those,
    and Python 3.11's executor has no terminate_workers()); its resource tracker exits when
    the last of them has."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for p in processes:
        p.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        p.join(timeout=5)


_BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Workers are spawned with one BLAS thread each: the processes already use every core,
    and threaded BLAS on small matrices of a busy machine spins (measured: 12× slower)."""
    saved = {k: os.environ.get(k) for k in _BLAS_THREADS}
    os.environ.update({k: "1" for k in _BLAS_THREADS})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def corpus_steps(
    totals: Totals, layers: Sequence[int] | None = None, heads: Sequence[int] | None = None
) -> list[TraceStep]:
    """One layers × heads step (kind "heads") per statistic; `layers`/`heads`: only those rows
    and columns (labelled with the model's indices)."""
    steps = []
    for name, m in totals.means().items():
        rows = list(range(m.shape[0])) if layers is None else list(layers)
        cols = list(range(m.shape[1])) if heads is None else list(heads)
        step = heads_step(name, m[np.ix_(rows, cols)])
        steps.append(replace(step, rows=[f"L{i}" for i in rows], cols=[f"H{h}" for h in cols]))
    return steps


def corpus_trace(
    totals: Totals,
    model: str,
    source: str,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
) -> Trace:
    """The statistics as a Trace of layers × heads steps: rendered, exported (--json) and
    re-shown (`attn-cli show`) like any other trace."""
    means = totals.means()
    n_layers, n_heads = next(iter(means.values())).shape if means else (0, 0)
    config: dict[str, Any] = {
        "pipeline": HEADS,
        "model": model,
        "source": source,
        "lines": totals.lines,
        "skipped_lines": totals.skipped,
        "tokens": totals.tokens,
        "layers": n_layers,
        "heads": n_heads,
    }
    notes = [
        f"{totals.lines:,} {'line' if totals.lines == 1 else 'lines'}, {totals.tokens:,} tokens "
        f"of {source}: means over every token "
        "(Clark et al. 2019, What Does BERT Look At?)"
    ]
    if totals.skipped:
        lines = "line" if totals.skipped == 1 else "lines"
        notes.append(f"{totals.skipped:,} {lines} skipped: longer than the model's positions")
    return Trace(source, [], [], config, corpus_steps(totals, layers, heads), notes)


def file_lines(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 file, read as they are consumed (the file is never held whole),
    each with a cap (a device such as /dev/zero has no end of line)."""

    try:
        f = path.open("rb")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    with f:
        for number, raw in enumerate(read_lines(f, str(path), limit=1 << 62), 1):
            try:
                yield raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"{path}: line {number} is not valid UTF-8 (byte 0x{raw[exc.start]:02x})"
                ) from None


def count_lines(path: Path) -> int | None:
    """Lines in a regular file (for the progress bar), or None: a pipe or device cannot be
    read twice, nor counted (/dev/zero has no end)."""
    try:
        if not path.is_file():
            return None
        with path.open("rb") as f:
            return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return None
