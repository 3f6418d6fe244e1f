"""The merged sums of a corpus run, and which batches they hold.

Batches finish in any order (worker processes, a Dask cluster, a resumed run), and float
addition depends on order: adding the same batch sums in another order changes the last bits.
So batch sums are merged exactly: every float64 is an integer multiple of 2⁻¹⁰⁷⁴, and the
ledger keeps each sum as that integer (a Python int). Integer addition is exact, so the merged
statistics are the same numbers whatever the order, the machine count or the interruptions.
(Within a batch, lines are summed in float64 in file order: the same batch gives the same sums
wherever it runs, with single-threaded BLAS, which the local pool and Dask's workers use.)

With a path, the ledger is saved there every `every` batches (atomically: a crash leaves the
previous save) and on the way out of an interrupted run; opening it again skips the batches it
holds. It records what the run is (model, batch size, a digest of the input) and refuses to
continue a different one.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from attn_cli.errors import InputError, opt
from attn_cli.export import atomic_file

if TYPE_CHECKING:
    from attn_cli.methods.corpus_lines import Totals

FORMAT = "attn-cli/heads-partial"
VERSION = 1
SHIFT = 1074  # 2^-1074 is the smallest positive float64: every float64 is a multiple of it


def to_units(values: np.ndarray) -> np.ndarray:
    """float64 values as exact integers in units of 2^-1074 (an object array of Python ints)."""
    a = np.asarray(values, dtype=np.float64)
    if not np.isfinite(a).all():
        raise ValueError("a statistic is not finite")
    mantissa, exponent = np.frexp(a.ravel())  # a = mantissa · 2^exponent, 0.5 ≤ |mantissa| < 1
    ints = np.ldexp(mantissa, 53).astype(np.int64).tolist()  # exact: 53 significant bits
    shifts = (exponent + (SHIFT - 53)).tolist()
    exact = [m << s if s >= 0 else m >> -s for m, s in zip(ints, shifts, strict=True)]
    out = np.empty(len(exact), dtype=object)
    out[:] = exact
    return out.reshape(a.shape)


def from_units(units: np.ndarray) -> np.ndarray:
    """Exact integers in units of 2^-1074 -> float64, correctly rounded (Python's int / int)."""
    one = 1 << SHIFT
    return np.array([u / one for u in units.ravel()], dtype=np.float64).reshape(units.shape)


def lines_digest(lines: Sequence[str]) -> str:
    """SHA-256 of lines held in memory (stdin, a list): what a resumed run must find again."""
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8", "surrogatepass") + b"\n")
    return h.hexdigest()


class Ledger:
    """Exact sums of the batches done, by index; saved to `path` (if any) every `every`."""

    def __init__(self, identity: dict[str, Any], path: Path | None = None, every: int = 20):
        self.identity, self.path, self.every = identity, path, max(1, every)
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}
        self.lines = self.tokens = self.skipped = 0
        self.done: set[int] = set()
        self._unsaved = 0

    @classmethod
    def open(cls, identity: dict[str, Any], path: Path | None, every: int = 20) -> Ledger:
        """A new ledger, or the one saved at `path` when that file exists and is not empty
        (it must be of the same run: same model, batch size and input)."""
        ledger = cls(identity, path, every)
        if path is not None and path.exists() and path.stat().st_size:
            ledger._load(path)
        return ledger

    # --- the run ----------------------------------------------------------------------------

    def todo(
        self, batches: Iterable[list[str]], skip: Callable[[int], None]
    ) -> Iterator[tuple[int, list[str]]]:
        """(index, lines) of every batch not done yet; skip(n) for each batch already done."""
        for index, batch in enumerate(batches):
            if index in self.done:
                skip(len(batch))
            else:
                yield index, batch

    def record(self, index: int, batch: Totals) -> None:
        """Merge one batch's sums (exactly) and save every `every` batches."""
        try:
            units = {k: to_units(v) for k, v in batch.sums.items()}
        except ValueError:
            raise InputError(
                f"batch {index}: the model's attention gave a non-finite statistic"
            ) from None
        for k, v in units.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v
            self.counts[k] = self.counts.get(k, 0) + batch.counts[k]
        self.lines += batch.lines
        self.tokens += batch.tokens
        self.skipped += batch.skipped
        self.done.add(index)
        self._unsaved += 1
        if self._unsaved >= self.every:
            self.save()

    def rounded_sums(self) -> dict[str, np.ndarray]:
        """Every sum as float64, rounded once from its exact value."""
        return {k: from_units(v) for k, v in self.sums.items()}

    # --- the file ---------------------------------------------------------------------------

    def save(self) -> None:
        if self.path is None or not self.done:  # nothing done: leave no file behind
            return

        doc = {
            "format": FORMAT,
            "version": VERSION,
            "identity": self.identity,
            "done": _ranges(self.done),
            "lines": self.lines,
            "tokens": self.tokens,
            "skipped": self.skipped,
            "counts": self.counts,
            "shape": list(next(iter(self.sums.values())).shape) if self.sums else [],
            # hex: a sum is an integer of up to ~1,100 bits, beyond what JSON numbers carry
            "sums": {k: [format(u, "x") for u in v.ravel()] for k, v in self.sums.items()},
        }
        with atomic_file(self.path) as f:
            f.write(orjson.dumps(doc))
        self._unsaved = 0

    def _load(self, path: Path) -> None:

        where = f"{opt('resume')} {path}"
        try:
            doc = orjson.loads(path.read_bytes())
        except OSError as exc:
            raise InputError(f"{where}: cannot read: {exc.strerror}") from None
        except orjson.JSONDecodeError:
            raise InputError(f"{where}: not a partial result of attn-cli heads") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise InputError(f"{where}: not a partial result of attn-cli heads")
        if doc.get("version") != VERSION:
            raise InputError(f"{where}: partial result version {doc.get('version')} unknown")
        saved = doc.get("identity", {})
        differs = [k for k in self.identity if saved.get(k) != self.identity[k]]
        if differs:
            raise InputError(
                f"{where} is from another run ({', '.join(differs)} "
                f"{'differs' if len(differs) == 1 else 'differ'}): refusing to mix them; "
                "choose another file or delete it to start again"
            )
        try:
            shape = tuple(doc["shape"])
            self.sums = {k: _from_hex(v, shape) for k, v in doc["sums"].items()}
            self.counts = {k: int(v) for k, v in doc["counts"].items()}
            self.lines, self.tokens = int(doc["lines"]), int(doc["tokens"])
            self.skipped = int(doc["skipped"])
            self.done = {i for a, b in doc["done"] for i in range(a, b)}
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{where}: damaged partial result") from None


def _from_hex(values: list[str], shape: tuple[int, ...]) -> np.ndarray:
    out = np.empty(math.prod(shape), dtype=object)
    out[:] = [int(v, 16) for v in values]
    return out.reshape(shape)


def _ranges(indices: set[int]) -> list[list[int]]:
    """{0, 1, 2, 5} -> [[0, 3], [5, 6]]: half-open runs, short for a mostly contiguous set."""
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and runs[-1][1] == i:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    return runs
