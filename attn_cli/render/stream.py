"""The answer as it is generated: one line per new token, with how sure the model was, the
runners-up, and the tokens the pass that wrote it attended to most (attn-cli generate)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.text import Text

from attn_cli.trace import printable

DIM, SPECIAL, TOKEN = "dim", "bold magenta", "bold"


def _percent(p: float) -> str:
    return f"{100 * p:5.1f}%"


def header(console: Console, g: Any) -> None:
    """What runs: the model, the prompt's size, how tokens are chosen, which maps are averaged."""
    s = g.sampler
    how = (
        "greedy"
        if s.greedy
        else f"sampled (temperature {s.temperature or 1.0:g}"
        + (f", top-k {s.top_k}" if s.top_k else "")
        + (f", top-p {s.top_p:g}" if s.top_p is not None else "")
        + f", seed {s.seed})"
    )
    d = g.model.dims
    where = f"{len(g.layers)} of {d.layers} layers × {len(g.heads)} of {d.heads} heads"
    console.print(
        Text(
            f"{g.model.name}: {len(g.prompt_ids)} prompt tokens{' (chat template)' if g.chat else ''}"
            f", up to {g.max_new_tokens} new, {how}; looked at: the mean over {where} "
            "(the first token left out)",
            style=DIM,
        )
    )


def token_line(console: Console, t: Any) -> None:
    """One new token: its number, the token, its probability, the runners-up, where it looked."""
    line = Text(f"{t.index:>4} ", style=DIM)
    line.append(f"{printable(t.token):<12}", style=SPECIAL if t.special else TOKEN)
    line.append(f" {_percent(t.probability)}")
    others = " · ".join(f"{printable(c)} {_short(p)}" for c, p in t.runners_up)
    line.append(f"  ({others})" if others else "", style=DIM)
    looked = " · ".join(f"{label} {w:.2f}" for _, label, w in t.attended)
    line.append("  ← " + looked if looked else "")
    console.print(line, overflow="ellipsis", no_wrap=True)


def _short(p: float) -> str:
    return f"{100 * p:.0f}%" if p >= 0.095 else f"{100 * p:.1f}%"


def footer(console: Console, status: Console, g: Any) -> None:
    """The answer as text; why generation stopped and the speed (on `status`: stderr, as
    timings differ from run to run)."""
    n = len(g.new_ids)
    rate = n / g.seconds if g.seconds > 0 else 0.0
    console.print(Text("answer: ", style=DIM) + Text(printable(g.answer()).replace("\\x0a", "\n")))
    console.file.flush()
    status.print(
        Text(
            f"{n} new token{'s' if n != 1 else ''} in {g.seconds:.2f} s ({rate:.1f}/s), stopped: "
            f"{g.stopped}{'' if g.cached else ' (no key/value cache: a full pass per token)'}",
            style=DIM,
        )
    )
