"""attn-cli: see self-attention number by number.

    import attn_cli
    t = attn_cli.explain("hi how are you")            # a Trace: tokens, config, every step
    t.attention()                                     # numpy (layers, heads, n, n)
    m = attn_cli.load_model("minilm")
    t = m.trace("the bank of the river", layers="all", heads="all")
    t.show(view="heatmap"); t.save("x.json"); attn_cli.load("x.json")

The names below are imported on first use, so `import attn_cli` (and the CLI's start-up) stays
light.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

__all__ = [
    "AttnError",
    "Comparison",
    "InputError",
    "Model",
    "Options",
    "Trace",
    "TraceStep",
    "__version__",
    "compare",
    "explain",
    "explain_all",
    "load",
    "load_all",
    "load_comparison",
    "load_model",
]

if TYPE_CHECKING:
    from attn_cli.api import explain, explain_all, load, load_all
    from attn_cli.comparison import Comparison, compare, load_comparison
    from attn_cli.errors import AttnError, InputError
    from attn_cli.options import Options
    from attn_cli.pretrained import Model, load_model
    from attn_cli.trace import Trace, TraceStep

_HOMES = {
    "Model": "attn_cli.pretrained",
    "Options": "attn_cli.options",
    "Comparison": "attn_cli.comparison",
    "compare": "attn_cli.comparison",
    "load_comparison": "attn_cli.comparison",
    "explain": "attn_cli.api",
    "explain_all": "attn_cli.api",
    "load": "attn_cli.api",
    "load_all": "attn_cli.api",
    "load_model": "attn_cli.pretrained",
    "AttnError": "attn_cli.errors",
    "InputError": "attn_cli.errors",
    "Trace": "attn_cli.trace",
    "TraceStep": "attn_cli.trace",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        value = getattr(import_module(_HOMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'attn_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
