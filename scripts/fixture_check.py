"""`--check` for the fixture scripts: rebuild the fixtures in a temporary directory and compare
them with the committed ones — weights, tokenizers and configs byte for byte, .npz arrays
within 1e-5 (float32 results of another torch build or BLAS differ by a few ulps of the
largest value: 4e-6 on logits of 4–6 measured between torch builds)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


def differences(new_root: Path, committed: Path) -> list[str]:
    problems = []
    for new in sorted(new_root.rglob("*.*")):
        rel = new.relative_to(new_root)
        old = committed / rel
        if not old.is_file():
            problems.append(f"{rel}: not committed")
        elif new.suffix != ".npz":
            if new.read_bytes() != old.read_bytes():
                problems.append(f"{rel}: differs")
        else:
            with np.load(new) as a, np.load(old) as b:
                if sorted(a.files) != sorted(b.files):
                    problems.append(f"{rel}: other arrays")
                    continue
                for k in a.files:
                    x, y = a[k], b[k]
                    same = x.shape == y.shape and (
                        np.allclose(x, y, rtol=0, atol=1e-5)
                        if x.dtype.kind == "f"
                        else np.array_equal(x, y)
                    )
                    if not same:
                        problems.append(f"{rel}: {k} differs")
    return problems


def check(build: Callable[[Path], None], committed: Path, name: str) -> int:
    """Run `build` into a temporary directory, report every difference; exit status 1 if any."""
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp))
        problems = differences(Path(tmp), committed)
    for p in problems:
        print(f"{name} --check:", p)
    print(f"{name} --check:", "differences found" if problems else "the fixtures match")
    return 1 if problems else 0
