"""Hostile configs and weights: every bad value a family reads, from config.json or GGUF
metadata, is one line on stderr naming the key and the value, and a non-zero exit: never a
traceback, never a run on to NaN maps, never a numpy RuntimeWarning. And no module outside a
family's own file names a family."""

from __future__ import annotations

import ast
import importlib
import json
import math
import pkgutil
import shutil
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import invoke

FIXTURES = Path(__file__).parent / "fixtures"
PACKAGE = Path(__file__).resolve().parent.parent / "attn_cli"


def explain(model: Path, text: str = "the cat sat"):
    """`attn-cli explain` on a model, with every warning recorded (pytest would otherwise
    swallow what a user sees on stderr)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = invoke(["explain", text, "--model", str(model)])
    return r, [w for w in caught if issubclass(w.category, RuntimeWarning)]


def assert_one_line_error(r, runtime_warnings, *fragments: str) -> None:
    assert r.exit_code != 0, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not runtime_warnings, [str(w.message) for w in runtime_warnings]


def with_config(tmp_path: Path, fixture: str, change: dict) -> Path:
    """A copy of a tiny fixture with some config.json values replaced."""
    d = tmp_path / fixture
    shutil.copytree(FIXTURES / fixture, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(change)
    (d / "config.json").write_text(json.dumps(cfg))  # NaN and Infinity as Python writes them
    return d


LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 16,
    "rope_theta": 500000.0,
}
NAN, INF = float("nan"), float("inf")

# (fixture, key, value, what the message says the value is)
CONFIG_CASES = [
    ("tiny_llama", "num_attention_heads", 0, "0"),
    ("tiny_llama", "num_attention_heads", "2", "'2'"),
    ("tiny_llama", "num_attention_heads", True, "true"),
    ("tiny_llama", "num_hidden_layers", -1, "-1"),
    ("tiny_llama", "num_hidden_layers", 1.5, "1.5"),
    ("tiny_llama", "num_hidden_layers", 0, "0"),
    ("tiny_llama", "num_hidden_layers", 2.0, "2.0"),
    ("tiny_llama", "hidden_size", None, "null"),
    ("tiny_llama", "hidden_size", [32], "[32]"),
    ("tiny_llama", "intermediate_size", "48", "'48'"),
    ("tiny_llama", "vocab_size", -300, "-300"),
    ("tiny_llama", "num_key_value_heads", 0, "0"),
    ("tiny_llama", "head_dim", -8, "-8"),
    ("tiny_llama", "head_dim", 7, "7"),  # an odd rotary width
    ("tiny_llama", "rms_norm_eps", NAN, "nan"),
    ("tiny_llama", "rms_norm_eps", -1e-6, "-1e-06"),
    ("tiny_llama", "rms_norm_eps", "x", "'x'"),
    ("tiny_llama", "tie_word_embeddings", "yes", "'yes'"),
    ("tiny_llama", "attention_bias", 1, "1"),
    ("tiny_llama", "rope_parameters", {**LLAMA3, "factor": 0}, "factor"),
    ("tiny_llama", "rope_parameters", {**LLAMA3, "factor": NAN}, "nan"),
    ("tiny_llama", "rope_parameters", {**LLAMA3, "rope_theta": 0}, "rope_theta"),
    ("tiny_llama", "rope_parameters", {**LLAMA3, "rope_theta": -1e4}, "-10000.0"),
    ("tiny_llama", "rope_parameters", "llama3", "'llama3'"),
    ("tiny_qwen2", "rope_theta", 0, "0"),
    ("tiny_qwen2", "rope_theta", -1, "-1"),
    ("tiny_qwen2", "rope_theta", NAN, "nan"),
    ("tiny_qwen2", "rope_theta", INF, "inf"),
    ("tiny_qwen2", "max_window_layers", -2, "-2"),
    ("tiny_qwen2", "sliding_window", 0, "0"),
    ("tiny_gemma3", "rope_theta", NAN, "nan"),
    ("tiny_gemma3", "query_pre_attn_scalar", 0, "0"),
    ("tiny_gemma3", "final_logit_softcapping", INF, "inf"),
    ("tiny_gemma3", "sliding_window_pattern", 0, "0"),
    ("tiny_gemma3", "rope_local_base_freq", -1.0, "-1.0"),
    ("tiny_gemma3", "layer_types", "sliding_attention", "'sliding_attention'"),
    ("tiny_phi3", "partial_rotary_factor", 0, "0"),
    ("tiny_phi3", "partial_rotary_factor", 1.5, "1.5"),
    ("tiny_phi3", "original_max_position_embeddings", "4", "'4'"),
    ("tiny_bert", "layer_norm_eps", "x", "'x'"),
    ("tiny_bert", "layer_norm_eps", NAN, "nan"),
    ("tiny_bert", "layer_norm_eps", -1e-12, "-1e-12"),
    ("tiny_bert", "num_attention_heads", 0, "0"),
    ("tiny_bert", "num_hidden_layers", 1.5, "1.5"),
    ("tiny_bert", "type_vocab_size", None, "null"),
    ("tiny_gpt2", "n_head", "4", "'4'"),
    ("tiny_gpt2", "n_layer", -1, "-1"),
    ("tiny_gpt2", "layer_norm_epsilon", NAN, "nan"),
    ("tiny_gpt2", "n_embd", None, "null"),
    ("tiny_gpt2", "n_inner", 0, "0"),
    # the families of issues 22 and 23
    ("tiny_mixtral", "num_local_experts", "4", "'4'"),
    ("tiny_mixtral", "num_experts_per_tok", 0, "0"),
    ("tiny_mixtral", "num_hidden_layers", 10**12, "1000000000000"),  # no list per layer first
    ("tiny_qwen3_moe", "decoder_sparse_step", 0, "0"),
    ("tiny_qwen3_moe", "num_hidden_layers", 10**12, "1000000000000"),
    ("tiny_olmoe", "num_experts", -1, "-1"),
    ("tiny_llama4", "interleave_moe_layer_step", 0, "0"),
    ("tiny_llama4", "num_experts_per_tok", 10**12, "1000000000000"),
    ("tiny_deepseek_v2", "kv_lora_rank", "12", "'12'"),
    ("tiny_deepseek_v2", "first_k_dense_replace", -1, "-1"),
    ("tiny_deepseek_v3", "routed_scaling_factor", NAN, "nan"),
    ("tiny_deepseek_v3", "num_hidden_layers", 10**12, "1000000000000"),
    ("tiny_qwen3_next", "linear_conv_kernel_dim", 0, "0"),
    ("tiny_qwen3_next", "linear_num_value_heads", 1.5, "1.5"),
    ("tiny_seq2seq/t5", "relative_attention_num_buckets", 0, "0"),
    ("tiny_seq2seq/bart", "encoder_layers", "2", "'2'"),
    ("tiny_seq2seq/marian", "d_model", None, "null"),
    ("tiny_seq2seq/mbart", "scale_embedding", "yes", "'yes'"),
]


@pytest.mark.parametrize(
    "fixture, key, value, shown",
    CONFIG_CASES,
    ids=[f"{c[0]}-{c[1]}-{c[2]!r}" for c in CONFIG_CASES],
)
def test_a_bad_config_value_is_one_line_naming_key_and_value(tmp_path, fixture, key, value, shown):
    r, runtime = explain(with_config(tmp_path, fixture, {key: value}))
    assert_one_line_error(r, runtime, "config.json", key, shown)


VISION = "tiny_vision/"
PICTURE = FIXTURES / "tiny_vision" / "picture.ppm"
# (vision fixture, key, value, what the message says the value is)
VISION_CASES = [
    ("vit", "hidden_size", True, "true"),
    ("vit", "num_hidden_layers", 2.0, "2.0"),
    ("vit", "num_attention_heads", None, "null"),
    ("vit", "intermediate_size", "32", "'32'"),
    ("vit", "layer_norm_eps", NAN, "nan"),
    ("vit", "qkv_bias", "yes", "'yes'"),
    ("vit", "image_size", [32, 16], "[32, 16]"),
    ("vit", "patch_size", 0, "0"),
    ("vit", "num_channels", -3, "-3"),
    ("vit", "hidden_act", 5, "5"),
    ("dinov2_registers", "mlp_ratio", 0, "0"),
    ("dinov2_registers", "mlp_ratio", INF, "inf"),
    ("dinov2_registers", "use_swiglu_ffn", 1, "1"),
    ("dinov2_registers", "num_register_tokens", -1, "-1"),
    ("dinov2_registers", "layer_norm_eps", -1e-6, "-1e-06"),
    ("clip", "num_attention_heads", "2", "'2'"),
    ("clip", "patch_size", [8.0, 8.0], "[8.0, 8.0]"),
    ("siglip", "vision_use_head", "no", "'no'"),
    ("siglip", "hidden_size", 1.5, "1.5"),
]


@pytest.mark.parametrize(
    "fixture, key, value, shown",
    VISION_CASES,
    ids=[f"{c[0]}-{c[1]}-{c[2]!r}" for c in VISION_CASES],
)
def test_a_bad_vision_config_value_is_one_line_naming_key_and_value(
    tmp_path, fixture, key, value, shown
):
    r, runtime = explain(with_config(tmp_path, VISION + fixture, {key: value}), str(PICTURE))
    assert_one_line_error(r, runtime, "config.json", key, shown)


@pytest.mark.parametrize("fixture, model_type", [("clip", "clip"), ("siglip", "siglip")])
def test_a_full_clip_or_siglip_config_is_checked_in_its_vision_config(
    tmp_path, fixture, model_type
):
    """The vision tower's settings of a full checkpoint are its vision_config's: a bad value
    there is named with it; vision_config itself must be an object."""
    d = with_config(tmp_path, VISION + fixture, {})
    vision = json.loads((d / "config.json").read_text())
    vision.pop("model_type")
    for nested, shown in [({**vision, "num_hidden_layers": 0}, "0"), ("x", "'x'")]:
        (d / "config.json").write_text(
            json.dumps({"model_type": model_type, "vision_config": nested})
        )
        r, runtime = explain(d, str(PICTURE))
        key = "num_hidden_layers" if isinstance(nested, dict) else "vision_config must be"
        assert_one_line_error(r, runtime, "config.json: vision_config", key, shown)


def test_vision_sizes_that_disagree_are_named(tmp_path):
    r, runtime = explain(with_config(tmp_path, VISION + "vit", {"hidden_size": 15}), str(PICTURE))
    assert_one_line_error(r, runtime, "hidden_size 15 is not divisible by num_attention_heads 2")


def test_the_unchanged_vision_fixtures_run(tmp_path):
    """The hostile cases above differ from these only in the one value."""
    for fixture in ("vit", "dinov2_registers", "clip", "siglip"):
        r, runtime = explain(with_config(tmp_path, VISION + fixture, {}), str(PICTURE))
        assert r.exit_code == 0, r.stderr
        assert not runtime


@pytest.mark.parametrize(
    "change, message",
    [
        ({"num_attention_heads": 3}, "num_attention_heads 3 is not a multiple of"),
        ({"head_dim": 10}, "shape"),  # config and weights disagree: named, not computed
        ({"num_hidden_layers": 5}, "missing tensor"),
        (
            {"rope_parameters": {**LLAMA3, "low_freq_factor": 5.0}},
            "high_freq_factor 4.0 must be at least low_freq_factor 5.0",
        ),
    ],
)
def test_values_that_disagree_with_each_other_or_the_weights(tmp_path, change, message):
    r, runtime = explain(with_config(tmp_path, "tiny_llama", change))
    assert_one_line_error(r, runtime, message)


def test_a_missing_required_key_is_named(tmp_path):
    d = with_config(tmp_path, "tiny_llama", {})
    cfg = json.loads((d / "config.json").read_text())
    del cfg["num_hidden_layers"]
    (d / "config.json").write_text(json.dumps(cfg))
    r, runtime = explain(d)
    assert_one_line_error(r, runtime, "config.json: num_hidden_layers is missing")


def test_the_args_checks_are_the_families_and_values_stay_as_given():
    """Checked values are kept as given (ints stay ints: a trace's config does not change);
    a value's kind is the family's (Gemma 3's defaults fill what its config leaves out)."""
    from attn_cli.errors import InputError
    from attn_cli.models._decoder import DecoderArgs
    from attn_cli.models.gemma import Gemma3TextArgs

    cfg = json.loads((FIXTURES / "tiny_llama" / "config.json").read_text())
    a = DecoderArgs.parse(cfg)
    assert (a.num_attention_heads, a.kv_heads, a.head_size) == (4, 2, 8)
    assert type(a.rms_norm_eps) is float and a.tie_word_embeddings is True
    g = Gemma3TextArgs.parse({"num_hidden_layers": 2})
    assert (g.hidden_size, g.rope_theta, g.sliding_window_pattern) == (2304, 1_000_000.0, 6)
    with pytest.raises(InputError, match=r"^x: num_hidden_layers must be a positive integer"):
        Gemma3TextArgs.parse({"num_hidden_layers": np.float64(2.0)}, source="x")


# -- weights -----------------------------------------------------------------------------------


def stored_name(d: Path, tensor: str) -> str:
    """The name a checkpoint stores `tensor` under (with its wrapper prefix, if any)."""
    blob = (d / "model.safetensors").read_bytes()
    stored = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])
    return next(k for k in stored if k.endswith(tensor.removeprefix("model.")))


def poison_safetensors(path: Path, name: str, value: float) -> None:
    """Overwrite the first element of tensor `name` with `value`, in its stored dtype."""
    blob = bytearray(path.read_bytes())
    n = int.from_bytes(blob[:8], "little")
    info = json.loads(blob[8 : 8 + n])[name]
    at = 8 + n + info["data_offsets"][0]
    if info["dtype"] == "BF16":
        raw = struct.pack("<f", value)[2:]
    elif info["dtype"] == "F16":
        raw = np.float16(value).tobytes()
    else:
        raw = struct.pack("<f", value)
    blob[at : at + len(raw)] = raw
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize(
    "fixture, tensor",
    [
        ("tiny_llama", "model.layers.1.mlp.up_proj.weight"),
        ("tiny_llama", "model.embed_tokens.weight"),  # read by rows: the first row is token 0
        ("tiny_bert", "encoder.layer.0.attention.self.key.bias"),
    ],
)
@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_weights_holding_nan_or_inf_are_refused(tmp_path, fixture, tensor, value):
    d = tmp_path / fixture
    shutil.copytree(FIXTURES / fixture, d)
    poison_safetensors(d / "model.safetensors", stored_name(d, tensor), value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = invoke(
            ["explain", "[CLS]" if fixture == "tiny_bert" else "<|endoftext|>", "--model", str(d)]
        )
    runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    shown = "nan" if math.isnan(value) else repr(np.float32(value).item())
    assert_one_line_error(r, runtime, "model.safetensors", tensor.removeprefix("model."), shown)


@pytest.mark.parametrize(
    "fixture, tensor",
    [
        ("tiny_llama", "layers.0.self_attn.q_proj.weight"),
        ("tiny_gpt2", "h.0.attn.c_attn.weight"),
        ("tiny_bert", "encoder.layer.0.attention.self.query.weight"),
    ],
)
def test_finite_weights_too_large_for_float32_stop_in_one_line(tmp_path, fixture, tensor):
    """3e38 is a float32, but the products it enters are not: one line, no NaN maps."""
    d = tmp_path / fixture
    shutil.copytree(FIXTURES / fixture, d)
    poison_safetensors(d / "model.safetensors", stored_name(d, tensor), 3e38)
    r, runtime = explain(d)
    assert_one_line_error(r, runtime, "numbers beyond float32", "overflow")


# -- GGUF metadata -----------------------------------------------------------------------------

GGUF_CASES = [
    ("llama.block_count", "2", "'2'"),
    ("llama.block_count", 2.0, "2.0"),
    ("llama.block_count", 0, "0"),
    ("llama.embedding_length", "32", "'32'"),
    ("llama.attention.head_count", 0, "0"),
    ("llama.attention.head_count", 1.5, "1.5"),
    ("llama.attention.head_count_kv", "2", "'2'"),
    ("llama.feed_forward_length", 0, "0"),
    ("llama.attention.key_length", 0, "0"),
    ("llama.context_length", 0, "0"),
    ("llama.attention.layer_norm_rms_epsilon", NAN, "nan"),
    ("llama.attention.layer_norm_rms_epsilon", -0.5, "-0.5"),
    ("llama.rope.freq_base", 0.0, "0.0"),
    ("llama.rope.freq_base", -1.0, "-1.0"),
    ("llama.rope.freq_base", NAN, "nan"),
    ("llama.rope.freq_base", INF, "inf"),
    ("llama.rope.freq_base", "10000", "'10000'"),
    ("llama.rope.dimension_count", 7, "7"),
    ("llama.rope.scaling.factor", 0.0, "0.0"),
]


GGUF_TEXT = "a=b!c"  # in the tiny byte vocabulary (its first 77 byte characters)


@pytest.fixture(scope="module")
def gguf_writer():
    pytest.importorskip("gguf")
    from tests import test_gguf_writer

    return test_gguf_writer


def tiny_gguf(writer, path: Path, extra_kv: dict | None = None, state=None) -> Path:
    """The writer's tiny llama, with one merge so that its tokenizer builds, and `extra_kv`
    replacing metadata values."""
    cfg = dict(writer.TINY)
    state = state or writer.random_state(writer.llama_shapes(cfg))
    kv = {"tokenizer.ggml.merges": ["Ġ t"], **(extra_kv or {})}
    return writer.write_gguf(path, "llama", cfg, state, extra_kv=kv)


@pytest.mark.parametrize(
    "key, value, shown", GGUF_CASES, ids=[f"{k}-{v!r}" for k, v, _ in GGUF_CASES]
)
def test_a_bad_gguf_metadata_value_is_one_line_naming_key_and_value(
    tmp_path, gguf_writer, key, value, shown
):
    import logging

    logging.getLogger("gguf").setLevel(logging.ERROR)  # the writer warns of the replaced key
    kv = {key: value}
    if key == "llama.rope.scaling.factor":
        kv["llama.rope.scaling.type"] = "linear"
    path = tiny_gguf(gguf_writer, tmp_path / "bad.gguf", kv)
    r, runtime = explain(path, GGUF_TEXT)
    assert_one_line_error(r, runtime, "bad.gguf", key, shown)


def test_the_unchanged_gguf_runs(tmp_path, gguf_writer):
    """The hostile cases above differ from this file only in the one value."""
    r, runtime = explain(tiny_gguf(gguf_writer, tmp_path / "good.gguf"), GGUF_TEXT)
    assert r.exit_code == 0, r.stderr
    assert not runtime


@pytest.mark.parametrize("qtype, at", [("F32", "[3, 5]"), ("Q8_0", "[3, 0]")])
def test_gguf_weights_holding_nan_are_refused(tmp_path, gguf_writer, qtype, at):
    """Q8_0: the NaN makes its block's scale NaN, and with it the block's 32 values."""
    cfg = dict(gguf_writer.TINY)
    state = gguf_writer.random_state(gguf_writer.llama_shapes(cfg))
    state["model.layers.0.mlp.down_proj.weight"][3, 5] = np.nan
    kv = {"tokenizer.ggml.merges": ["Ġ t"]}
    with np.errstate(invalid="ignore"):  # gguf's quantiser casts the NaN block to int8
        path = gguf_writer.write_gguf(
            tmp_path / "nan.gguf", "llama", cfg, state, qtype, extra_kv=kv
        )
    r, runtime = explain(path, GGUF_TEXT)
    assert_one_line_error(r, runtime, "nan.gguf", "blk.0.ffn_down.weight", "nan", at)


# -- one file per family -----------------------------------------------------------------------

# gguf/tokenizer.py speaks of tokenizer kinds (tokenizer.ggml.model "gpt2" or "llama") and of
# llama.cpp's by-name Phi-3 tokenizer quirk (general.name): tokenizers, not architectures.
TOKENIZER_WORDS = {"gguf/tokenizer.py": {"gpt2", "llama", "phi3"}}


def test_no_module_outside_a_family_file_names_a_family():
    import attn_cli.models as models
    from attn_cli.models.registry import families, gguf_tables

    names = set(families()) | set(gguf_tables())
    own = set()
    for info in pkgutil.iter_modules(models.__path__):
        module = importlib.import_module(f"attn_cli.models.{info.name}")
        if hasattr(module, "FAMILY"):
            own.add(Path(str(module.__file__)).resolve())
    assert {path.stem for path in own} == {
        *("bert", "gpt2", "llama", "mistral", "qwen", "gemma", "phi3", "olmo2", "smollm3"),
        *("gpt_oss", "deepseek", "vit", "deit", "dinov2", "clip", "siglip"),
        *("mixtral", "qwen3_moe", "olmoe", "llama4"),
        "qwen3_next",
        *("t5", "bart", "mbart", "marian", "whisper"),  # encoder–decoder families
    }
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.resolve() in own:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        strings = {
            n.value
            for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str)
        }
        rel = path.relative_to(PACKAGE).as_posix()
        named = (strings & names) - TOKENIZER_WORDS.get(rel, set())
        if named:
            found[rel] = sorted(named)
    assert found == {}


# -- declared capabilities ---------------------------------------------------------------------


def test_declared_capabilities_decide_what_runs():
    """What a family declares, not its display strings or signatures, decides: ALTI reads the
    norm after attention unless the placement is "pre"; norms and ALTI need a linear value
    path; sentence pairs need token type ids."""
    import dataclasses

    import attn_cli
    from attn_cli.errors import InputError
    from attn_cli.methods.registry import MethodRun, ModelParts, post_norm
    from attn_cli.models.registry import family_for

    declared = {
        name: (f.norm, f.lm_head, f.linear_values, f.sentence_pairs)
        for name in ("bert", "gpt2", "llama", "gemma", "gemma3_text", "phi3")
        if (f := family_for(name)) is not None
    }
    assert declared == {
        "bert": ("post", False, True, True),
        "gpt2": ("pre", True, True, False),
        "llama": ("pre", True, True, False),
        "gemma": ("sandwich", True, True, False),
        "gemma3_text": ("sandwich", True, True, False),
        "phi3": ("pre", True, True, False),
    }
    m = attn_cli.load_model(FIXTURES / "tiny_bert")
    assert m.trace("the cat", pair="a dog").config["token_type_ids"][-1] == 1
    bert = m.family
    nonlinear = ModelParts(dataclasses.replace(bert, linear_values=False), m.weights, m.config)
    with pytest.raises(InputError, match="norms needs a linear value path"):
        MethodRun(["norms"], ["a"], [1], nonlinear)
    assert post_norm(ModelParts(bert, m.weights, m.config), 0) is not None
    assert (
        post_norm(ModelParts(dataclasses.replace(bert, norm="pre"), m.weights, m.config), 0) is None
    )
    m.family = dataclasses.replace(bert, sentence_pairs=False)
    with pytest.raises(InputError, match="no segment"):
        m.trace("the cat", pair="a dog")


@pytest.mark.parametrize(
    "fixture, change, says",
    [
        ("tiny_deepseek_v3", {"n_routed_experts": 10**12}, "mlp.gate.weight has shape (8, 32)"),
        ("tiny_deepseek_v2", {"n_routed_experts": 10**12}, "mlp.gate.weight has shape (8, 32)"),
        ("tiny_qwen3_next", {"num_experts": 10**12}, "mlp.gate.weight has shape (4, 32)"),
        (
            "tiny_qwen3_next",
            {"num_hidden_layers": 10**12, "layer_types": None},
            "num_hidden_layers 1000000000000 is more than model.safetensors holds",
        ),
    ],
)
def test_absurd_expert_and_layer_counts_stop_before_anything_is_built(
    tmp_path, fixture, change, says
):
    """An expert count is checked against the router's weight before a name is listed per
    expert (10¹² of them filled memory), a layer count against the checkpoint's tensors before
    a list is built per layer: one line, in a child limited to 2 GiB."""
    from tests.test_hostile import one_line_error, run

    d = with_config(tmp_path, fixture, change)
    one_line_error(run(["explain", "the cat", "--model", str(d)]), says=says)
