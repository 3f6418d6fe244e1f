"""Loading llama.cpp (llama-cpp-python) in tests and benchmarks without the AMX crash.

On CPUs with AMX, llama.cpp moves weights into "extra" buffer types (its AMX repacking) and
`Llama.eval` then segfaults (exit 139): the whole pytest run dies with no summary. Loading with
`use_extra_bufts = False` keeps the weights in plain CPU buffers. `Llama` takes its model
parameters from `llama_cpp.llama_cpp.llama_model_default_params()`, so that function is wrapped
once to return parameters with the flag off. Imported by tests/conftest.py and by the
benchmarks' llama.cpp children, so it imports nothing but llama_cpp.
"""

from __future__ import annotations

from typing import Any


def without_extra_buffers() -> Any:
    """The llama_cpp module, its default model parameters patched (idempotent)."""
    import llama_cpp

    lib = llama_cpp.llama_cpp
    default = lib.llama_model_default_params
    if not getattr(default, "without_extra_buffers", False):

        def params() -> Any:
            p = default()
            p.use_extra_bufts = False
            return p

        params.without_extra_buffers = True  # type: ignore[attr-defined]
        lib.llama_model_default_params = params
    return llama_cpp


def load_llama(*args: Any, **kwargs: Any) -> Any:
    """llama_cpp.Llama(*args, **kwargs), loaded without extra buffer types."""
    return without_extra_buffers().Llama(*args, **kwargs)
