"""Corpus statistics on a Dask cluster (the optional extra: pip install 'attn-cli[cluster]').

Batches of lines are submitted to the cluster's workers; each worker process loads the model
once (a cache in this module, which lives as long as the worker) and sends back the batch's
sums, which the caller merges exactly (corpus_ledger), so the statistics are the numbers a
one-machine run gives. A worker lost mid-run costs its batch: the scheduler runs it again
elsewhere, and a batch that raises is retried `retries` times.

The workers need attn-cli installed and the model at the same name or path as here. Workers
started by `dask worker` (with its nanny, the default) run BLAS single-threaded, like the
local pool, which is what makes the sums bit for bit the same.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from attn_cli.errors import InputError, opt
from attn_cli.methods.corpus_lines import LineRunner, Totals, chunk_totals, model_runner

_RUNNERS: dict[tuple[str, int | None], LineRunner] = {}
_LOADING = threading.Lock()  # a worker with several threads loads the model once


def batch_totals(model: str, max_tokens: int | None, lines: list[str]) -> Totals:
    """Run on a worker: the sums of one batch, with this worker's copy of the model."""
    key = (model, max_tokens)
    with _LOADING:
        if key not in _RUNNERS:
            _RUNNERS[key] = model_runner(model, max_tokens)
    return chunk_totals(_RUNNERS[key], lines)


def connect(address: str) -> Any:
    """A distributed.Client for the scheduler at `address`, or a one-line error."""
    try:
        from distributed import Client
    except ImportError:
        raise InputError(
            f"{opt('scheduler')} needs Dask's distributed scheduler: "
            "pip install 'attn-cli[cluster]'"
        ) from None
    try:
        return Client(address, timeout="20s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise InputError(
            f"{opt('scheduler', address)}: cannot reach the scheduler ({exc})"
        ) from None


def run_batches(
    batches: Iterable[tuple[int, list[str]]],
    model: str,
    max_tokens: int | None,
    address: str,
    done: Callable[[int, int, Totals], None],
    retries: int = 3,
) -> None:
    """Submit every (index, lines) batch to the cluster at `address`; done(index, line count,
    sums) as each comes back (in any order). At most two batches per worker thread are in
    flight, so memory stays flat however long the input."""
    client = connect(address)  # first: without distributed, it says what to install
    if Path(model).exists():  # a path: absolute, since workers need not share our directory
        model = str(Path(model).resolve())
    from distributed import as_completed

    run_id = uuid.uuid4().hex[:12]  # task keys of this run, unique on a shared scheduler
    pending: dict[Any, tuple[int, int]] = {}  # future -> (batch index, line count)
    try:
        threads = sum(client.nthreads().values())
        if not threads:
            raise InputError(f"{opt('scheduler', address)}: the cluster has no workers")
        finished = as_completed(loop=client.loop)

        def collect(future: Any) -> None:
            index, count = pending.pop(future)
            done(index, count, future.result())
            future.release()

        for index, lines in batches:
            if len(pending) >= 2 * threads:
                collect(next(finished))
            future = client.submit(
                batch_totals,
                model,
                max_tokens,
                lines,
                key=f"attn-cli-heads-{run_id}-{index}",
                retries=retries,
                pure=False,
            )
            pending[future] = (index, len(lines))
            finished.add(future)
        for future in finished:
            collect(future)
    finally:
        for future in pending:  # interrupted: the cluster need not finish them
            future.cancel()
        client.close()
