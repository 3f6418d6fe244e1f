"""gpt-oss in numpy against transformers' GptOssForCausalLM (eager attention, float32): the
sink logit per head, alternating sliding-window and full layers, YaRN, the mixture of experts.

transformers builds a tiny random model (hidden 64, 3 layers sliding/full/sliding with a window
of 4 tokens, 4 query heads on 2 key/value heads, head_dim 16, 4 experts top 2), saves it in
bfloat16, and runs it in float32 from those files; attn-cli runs on the same files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from attn_cli.errors import InputError
from attn_cli.models.gpt_oss import GptOssArgs
from tests.conftest import ROOT, require
from tests.decoder_utils import attention_maps, build_random_model, family, reference, run

IDS = [5, 17, 250, 3, 99, 42, 42, 7, 180, 64, 12, 299, 1, 150]  # 14 tokens > the window (4)
TINY = dict(
    head_dim=16,
    num_local_experts=4,
    num_experts_per_tok=2,
    sliding_window=4,
    max_position_embeddings=32,  # = factor × original_max_position_embeddings
    rope_parameters={
        "rope_type": "yarn",
        "rope_theta": 150000.0,
        "factor": 4.0,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "truncate": False,
        "original_max_position_embeddings": 8,
    },
)
FIXTURE = ROOT / "tests" / "fixtures" / "tiny_gpt_oss"


def set_sinks(directory: Path, value: float | None, seed: int = 0) -> None:
    """Rewrite every layer's sink logits: `value` for all heads, or None for random ones around
    1 (larger than the random init, so rows lose a visible share to the sink)."""
    import torch
    from safetensors.torch import load_file, save_file

    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    gen = torch.Generator().manual_seed(seed)
    for name, t in tensors.items():
        if name.endswith("self_attn.sinks"):
            new = (
                torch.full_like(t, value)
                if value is not None
                else torch.randn(t.shape, generator=gen) + 1.0
            )
            tensors[name] = new.to(t.dtype)
    save_file(tensors, str(path), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    require("torch")
    require("transformers")
    d = tmp_path_factory.mktemp("gpt_oss")
    build_random_model("gpt_oss", d, overrides=TINY)
    set_sinks(d, None)
    return d


@pytest.mark.reference
def test_every_attention_map_and_the_logits_match_transformers(tiny):
    cfg = json.loads((tiny / "config.json").read_text())
    assert cfg["layer_types"] == ["sliding_attention", "full_attention", "sliding_attention"]
    ref = reference(tiny, IDS)
    ours = run(tiny, IDS)
    maps = attention_maps(ours)
    assert maps.shape == ref["attentions"].shape == (3, 4, len(IDS), len(IDS))
    np.testing.assert_allclose(maps, ref["attentions"], atol=1e-5)
    np.testing.assert_allclose(ours["logits"], ref["logits"], atol=1e-4)
    n = len(IDS)
    i, j = np.indices((n, n))
    assert (maps[0][:, (j > i) | (j <= i - 4)] == 0).all()  # sliding: the token and 3 before
    assert (maps[1][:, j <= i] > 0).all()  # full: every earlier token
    for layer in ours["layers"]:
        record = layer.attention
        assert record.map_kind == "partial_weights"
        sink = record["sink"][..., 0]  # (heads, n)
        np.testing.assert_allclose(record.weights.sum(-1), 1.0 - sink, atol=1e-6)
        assert (sink > 0).all() and sink.mean() > 0.05  # the sink takes a visible share


@pytest.mark.reference
def test_sinks_switched_off_change_the_maps_and_rows_sum_to_one(tiny, tmp_path):
    import shutil

    off = tmp_path / "off"
    shutil.copytree(tiny, off)
    set_sinks(off, -1e4)  # exp(−10⁴) is 0 in float32: no mass to the sink
    with_sinks, without = attention_maps(run(tiny, IDS)), attention_maps(run(off, IDS))
    np.testing.assert_allclose(without, reference(off, IDS)["attentions"], atol=1e-5)
    np.testing.assert_allclose(without.sum(-1), 1.0, atol=1e-6)
    assert np.abs(with_sinks - without).max() > 0.05


@pytest.mark.reference
def test_router_weights_each_token_top_k_experts(tiny):
    import torch
    import transformers

    ours = run(tiny, IDS)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(tiny), dtype=torch.float32, attn_implementation="eager"
    )
    with torch.no_grad():
        out = model(torch.tensor([IDS]), output_router_logits=True)
    for layer, logits in zip(ours["layers"], out.router_logits, strict=True):
        routing = layer.attention["router"]
        top, chosen = torch.topk(logits, 2, dim=-1)
        expected = np.zeros_like(routing)
        np.put_along_axis(expected, chosen.numpy(), torch.softmax(top, -1).numpy(), axis=-1)
        np.testing.assert_allclose(routing, expected, atol=1e-5)
        assert ((routing > 0).sum(-1) == 2).all()


def test_fixture_matches_transformers_without_torch():
    """The committed fixture (scripts/make_decoder_fixtures.py): maps and logits as
    transformers computed them, rows summing to 1 − the sink mass."""
    expected = np.load(FIXTURE / "expected.npz")
    ids = expected["ids"].tolist()
    ours = run(FIXTURE, ids)
    maps = attention_maps(ours)
    assert maps.shape == expected["attentions"].shape
    np.testing.assert_allclose(maps, expected["attentions"], atol=1e-5)
    np.testing.assert_allclose(ours["logits"][-3:], expected["logits"], atol=1e-4)
    record = ours["layers"][0].attention
    np.testing.assert_allclose(record.weights.sum(-1), 1.0 - record["sink"][..., 0], atol=1e-6)
    assert (record["sink"] > 0).all() and record["sink"].mean() > 0.05


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_experts_per_tok": 5}, "num_experts_per_tok 5 is more than num_local_experts 4"),
        ({"swiglu_limit": -1}, "swiglu_limit must be a positive finite number, got -1"),
        ({"num_local_experts": "4"}, "num_local_experts must be a positive integer, got '4'"),
    ],
)
def test_bad_config_values_are_refused_by_name(change, message):
    cfg = {"model_type": "gpt_oss", "num_local_experts": 4, **change}
    with pytest.raises(InputError, match=message):
        GptOssArgs.parse(cfg)


def test_defaults_are_transformers_gpt_oss_config():
    args = GptOssArgs.parse({})
    assert (args.hidden_size, args.num_attention_heads, args.kv_heads, args.head_size) == (
        2880,
        64,
        8,
        64,
    )
    assert (args.num_local_experts, args.num_experts_per_tok, args.sliding_window) == (128, 4, 128)
    assert (args.swiglu_alpha, args.swiglu_limit, args.attention_bias) == (1.702, 7.0, True)


def test_hub_style_rope_keys_give_the_same_maps():
    """gpt-oss-20b's config.json writes rope_theta and rope_scaling (transformers 4 style)."""
    cfg = json.loads((FIXTURE / "config.json").read_text())
    hub = {k: v for k, v in cfg.items() if k != "rope_parameters"}
    rope = dict(cfg["rope_parameters"])
    hub["rope_theta"] = rope.pop("rope_theta")
    hub["rope_scaling"] = rope
    ids = np.load(FIXTURE / "expected.npz")["ids"].tolist()
    np.testing.assert_array_equal(
        attention_maps(run(FIXTURE, ids, hub)), attention_maps(run(FIXTURE, ids, cfg))
    )
    # and without any rope settings, GptOssConfig's YaRN (factor 32 over 4,096 tokens)
    plain = {k: v for k, v in hub.items() if k != "rope_scaling"}
    described = run(FIXTURE, ids, plain)["family"].describe(plain)["rope"]["full_attention"]
    assert (described["type"], described["factor"]) == ("yarn", 32.0)
    assert described["original_max_position_embeddings"] == 4096


def test_mxfp4_experts_are_refused_in_one_line():
    """The hub's gpt-oss checkpoints store experts as MXFP4 blocks and scales."""
    from attn_cli.models.weights import SafetensorsWeights

    class Mxfp4(SafetensorsWeights):
        def __contains__(self, name: object) -> bool:
            return name == "layers.0.mlp.experts.gate_up_proj_blocks" or super().__contains__(name)

    fam = family("gpt_oss")
    cfg = json.loads((FIXTURE / "config.json").read_text())
    with pytest.raises(InputError, match=r"MXFP4 \(gate_up_proj_blocks\).*Mxfp4Config"):
        fam.check(Mxfp4(FIXTURE, fam.anchor), cfg)


def test_experts_are_read_one_at_a_time_and_only_when_routed_to():
    from attn_cli.models.weights import SafetensorsWeights

    fam = family("gpt_oss")
    cfg = json.loads((FIXTURE / "config.json").read_text())
    read: list[tuple[str, tuple[int, ...]]] = []

    class Recording(SafetensorsWeights):
        def __getitem__(self, name: str) -> np.ndarray:
            assert not name.endswith(("gate_up_proj", "down_proj")), f"{name} read whole"
            return super().__getitem__(name)

        def rows(self, name: str, ids: list[int]) -> np.ndarray:
            read.append((name, tuple(ids)))
            return super().rows(name, ids)

    w = Recording(FIXTURE, fam.anchor)
    ids = [5, 17, 3]  # three tokens, top 2 of 4 experts: some experts get no token
    x = fam.embed(w, ids, cfg)
    read.clear()
    for i, layer in enumerate(fam.layers(w, x, cfg)):
        routed = set(np.flatnonzero(layer.attention["router"].any(axis=0)).tolist())
        gate_up = {e for name, (e,) in read if name == f"layers.{i}.mlp.experts.gate_up_proj"}
        down = {e for name, (e,) in read if name == f"layers.{i}.mlp.experts.down_proj"}
        assert gate_up == down == routed
    assert any(len(set(e for n, (e,) in read if f"layers.{i}." in n)) < 4 for i in range(2))
