"""Qwen3-Next in numpy against transformers' Qwen3NextForCausalLM (eager attention, float32,
the torch path of the gated delta rule): three Gated DeltaNet linear-attention layers to one
gated softmax layer, partial rotary, (1 + w) norms, a mixture of experts with a shared expert.

transformers builds a tiny random model (hidden 64, 4 layers: linear, linear, linear, full;
4 query heads on 2 key/value heads of 16 dimensions, 4 of them rotated; linear layers with 2 key
heads of 8 serving 4 value heads of 12; 4 experts top 2 and a shared expert, layer 1 dense),
saves it in bfloat16, and runs it in float32 from those files; attn-cli runs on the same files.
A linear layer's map is its mixing matrix A (Y = A·V_conv), checked against a recurrence in
numpy and against transformers' layer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from attn_cli.errors import InputError
from attn_cli.models.qwen3_next import Qwen3NextArgs, delta_rule_map
from tests.conftest import ROOT, require
from tests.decoder_utils import (
    RecordingWeights,
    build_random_model,
    family,
    reference,
    rewrite_weights,
    run,
    zero_centred,
)

IDS = [5, 17, 250, 3, 99, 42, 42, 7, 180, 64, 12, 299, 1, 150]
# 70 tokens: more than transformers' chunk of 64, so its pass carries state between chunks
LONG = [(7 * i * i + 3 * i + 11) % 300 for i in range(70)]
TINY = dict(
    num_hidden_layers=4,
    head_dim=16,
    linear_key_head_dim=8,
    linear_value_head_dim=12,
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    num_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
    shared_expert_intermediate_size=48,
    mlp_only_layers=[1],
)
FIXTURE = ROOT / "tests" / "fixtures" / "tiny_qwen3_next"


def set_tensors(directory: Path, suffix: str, change) -> None:
    """Apply `change` (a torch tensor -> tensor) to every saved tensor ending in `suffix`."""
    rewrite_weights(directory, lambda name, t: change(t.clone()) if name.endswith(suffix) else t)


def recurrence(q, k, v, g, beta):
    """transformers' torch_recurrent_gated_delta_rule in numpy, float64, one head at a time:
    S_t = e^{g_t}·S_{t−1};  S_t += k_t·(β_t·(v_t − S_tᵀ·k_t))ᵀ;  y_t = S_tᵀ·q_t."""
    heads, n, dk = q.shape
    out = np.zeros((heads, n, v.shape[-1]))
    for h in range(heads):
        s = np.zeros((dk, v.shape[-1]))
        for t in range(n):
            s = s * np.exp(g[h, t])
            delta = (v[h, t] - s.T @ k[h, t]) * beta[h, t]
            s = s + np.outer(k[h, t], delta)
            out[h, t] = s.T @ q[h, t]
    return out


def linear_parts(record):
    """What the mixing matrix is made of, per value head: q, k (normalised), g, β, V_conv."""
    group = record.facts["group"]
    q = np.repeat(record["Q_norm"], group, axis=0)
    k = np.repeat(record["K_norm"], group, axis=0)
    gates = record["gates"].astype(np.float64)
    return q, k, np.log(gates[..., 0]), gates[..., 1], record["V_conv"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    require("torch")
    require("transformers")
    d = tmp_path_factory.mktemp("qwen3_next")
    build_random_model("qwen3_next", d, overrides=TINY)
    zero_centred(d)
    return d


def transformers_pass(directory: Path, ids: list[int]) -> dict:
    """transformers' float32 pass with hooks: per linear layer its core output (what the
    gated norm receives) and its output; per layer the MoE router's logits."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(directory), dtype=torch.float32, attn_implementation="eager"
    )
    caught: dict = {}
    for i, layer in enumerate(model.model.layers):
        if hasattr(layer, "linear_attn"):
            layer.linear_attn.norm.register_forward_hook(
                lambda m, inp, out, i=i: caught.__setitem__(("core", i), inp[0].numpy())
            )
            layer.linear_attn.register_forward_hook(
                lambda m, inp, out, i=i: caught.__setitem__(("out", i), out[0].numpy())
            )
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_attentions=True, output_router_logits=True)
    caught["logits"] = out.logits[0].numpy()
    caught["attentions"] = np.stack([a[0].numpy() for a in out.attentions])
    caught["router"] = [r.numpy() for r in out.router_logits]
    return caught


@pytest.mark.reference
def test_softmax_maps_and_logits_match_transformers(tiny):
    cfg = json.loads((tiny / "config.json").read_text())
    assert cfg["layer_types"] == ["linear_attention"] * 3 + ["full_attention"]
    ref = reference(tiny, IDS)
    ours = run(tiny, IDS)
    kinds = [layer.attention.map_kind for layer in ours["layers"]]
    assert kinds == ["mixing", "mixing", "mixing", "weights"]
    maps = np.stack([ours["layers"][3].attention.weights])
    assert maps.shape == ref["attentions"].shape == (1, 4, len(IDS), len(IDS))
    np.testing.assert_allclose(maps, ref["attentions"], atol=1e-5)
    np.testing.assert_allclose(ours["logits"], ref["logits"], atol=1e-4)
    np.testing.assert_allclose(ours["hidden"], ref["hidden"], atol=1e-4)


@pytest.mark.reference
@pytest.mark.parametrize("ids", [IDS, LONG], ids=["14 tokens", "70 tokens (two chunks)"])
def test_mixing_map_times_values_is_the_recurrence_and_transformers_output(tiny, ids):
    ours = run(tiny, ids)
    theirs = transformers_pass(tiny, ids)
    n = len(ids)
    for i in range(3):
        record = ours["layers"][i].attention
        a = record.weights  # (4 value heads, n, n)
        assert a.shape == (4, n, n) and record.map_kind == "mixing"
        assert (np.triu(a, 1) == 0).all()  # causal: nothing from later tokens
        assert (a < -1e-3).any()  # signed: a later write can cancel part of an earlier one
        assert np.abs(a.sum(-1) - 1).max() > 0.05  # rows are not probabilities
        q, k, g, beta, v = linear_parts(record)
        y = a @ v
        np.testing.assert_allclose(y, recurrence(q, k, v, g, beta), atol=2e-6)
        np.testing.assert_allclose(record["Y"], y, atol=1e-6)
        core = theirs[("core", i)].reshape(n, 4, 12).transpose(1, 0, 2)
        np.testing.assert_allclose(y, core, atol=2e-5)
        np.testing.assert_allclose(record.output, theirs[("out", i)], rtol=2e-5, atol=1e-4)
    np.testing.assert_allclose(ours["logits"], theirs["logits"], atol=1e-4)


@pytest.mark.parametrize("n", [9, 150])
def test_the_mixing_map_is_the_recurrence_and_the_closed_form_on_random_inputs(n):
    """Hand-made cases: 3 heads of random unit keys, decays and write strengths; 150 tokens run
    over three chunks of 64 with the state carried between them."""
    rng = np.random.default_rng(5)
    q = rng.normal(size=(3, n, 4)) * 0.5
    k = rng.normal(size=(3, n, 4))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.normal(size=(3, n, 6))
    g = -rng.uniform(0.0, 0.3, size=(3, n))
    beta = rng.uniform(0.0, 1.0, size=(3, n))
    a = delta_rule_map(q, k, g, beta)
    np.testing.assert_allclose(a @ v, recurrence(q, k, v, g, beta), atol=1e-5)
    # the closed form: (Q·Kᵀ ⊙ D)·(I + strictly_lower(β·K·Kᵀ ⊙ D))⁻¹·diag(β)
    cum = np.cumsum(g, axis=-1)
    decay = np.tril(np.exp(np.tril(cum[:, :, None] - cum[:, None, :])))
    system = np.tril(beta[:, :, None] * (k @ k.transpose(0, 2, 1)) * decay, -1) + np.eye(n)
    closed = (q @ k.transpose(0, 2, 1)) * decay @ np.linalg.inv(system) * beta[:, None, :]
    np.testing.assert_allclose(a, closed, atol=1e-5)
    # one token: y_0 = β_0·(q_0·k_0)·v_0
    np.testing.assert_allclose(a[:, 0, 0], beta[:, 0] * np.sum(q[:, 0] * k[:, 0], -1), rtol=1e-5)


@pytest.mark.reference
def test_gates_switched_off_change_the_mixing_maps(tiny, tmp_path):
    """No decay (A_log → −∞: e^g = 1), or one write strength for every token (the b rows of
    in_proj_ba zeroed: β = ½): the maps change, and still equal transformers' layers."""
    no_decay = tmp_path / "no_decay"
    shutil.copytree(tiny, no_decay)
    set_tensors(no_decay, "A_log", lambda t: t.fill_(-1e4))  # exp(−10⁴) = 0: g = 0
    half = tmp_path / "half_beta"
    shutil.copytree(tiny, half)

    def zero_b_rows(t):  # in_proj_ba per key head: b rows then a rows (2 value heads each)
        t.view(2, 4, -1)[:, :2] = 0  # b = 0: β = σ(0) = ½
        return t

    set_tensors(half, "in_proj_ba.weight", zero_b_rows)
    base = run(tiny, IDS)
    for directory, stage_check in (
        (no_decay, lambda r: np.testing.assert_array_equal(r["gates"][..., 0], 1.0)),
        (half, lambda r: np.testing.assert_array_equal(r["gates"][..., 1], 0.5)),
    ):
        off = run(directory, IDS)
        theirs = transformers_pass(directory, IDS)
        for i in range(3):
            record = off["layers"][i].attention
            stage_check(record)
            assert np.abs(record.weights - base["layers"][i].attention.weights).max() > 0.05
            np.testing.assert_allclose(record.output, theirs[("out", i)], rtol=2e-5, atol=1e-4)
        np.testing.assert_allclose(off["logits"], theirs["logits"], atol=1e-4)
    # without decay the map is the plain delta rule: D = 1 below the diagonal
    record = run(no_decay, IDS)["layers"][0].attention
    q, k, _, beta, _ = linear_parts(record)
    n = len(IDS)
    m = np.tril(beta[:, :, None] * (k @ k.transpose(0, 2, 1)), -1) + np.eye(n)
    expected = np.tril(q @ k.transpose(0, 2, 1)) @ np.linalg.inv(m) * beta[:, None, :]
    np.testing.assert_allclose(record.weights, expected, atol=1e-5)


@pytest.mark.reference
def test_partial_rotary_and_the_output_gate_switched_off(tiny, tmp_path):
    """Rotating every dimension changes the softmax maps; an output gate of ½ everywhere (its
    q_proj rows zeroed) leaves the layer's map but changes its output. Both as transformers.
    The rotary comparison runs with q/k norms × 0.7: at full strength this map is at float32's
    limit (transformers' own float32 and float64 passes differ by up to 1.2e-5 on such tiny
    models, and an AMD EPYC put attn-cli 1.1e-5 from its float32 answer); × 0.7 keeps the map
    sharp and every pass within 3e-6 of the float64 answer."""
    softer = tmp_path / "softer"
    shutil.copytree(tiny, softer)
    for name in ("q_norm.weight", "k_norm.weight"):
        set_tensors(softer, name, lambda t: t * 0.7)
    full_rotary = tmp_path / "full_rotary"
    shutil.copytree(softer, full_rotary)
    cfg = json.loads((full_rotary / "config.json").read_text())
    cfg["rope_parameters"]["partial_rotary_factor"] = 1.0
    (full_rotary / "config.json").write_text(json.dumps(cfg))
    soft = run(softer, IDS)["layers"][3].attention
    base = run(tiny, IDS)
    record = base["layers"][3].attention
    assert record.facts["rotary_dim"] == 4
    np.testing.assert_array_equal(record["Q_rot"][..., 4:], record["Q_norm"][..., 4:])
    rotated = run(full_rotary, IDS)
    assert rotated["layers"][3].attention.facts["rotary_dim"] == 16
    maps = rotated["layers"][3].attention.weights
    np.testing.assert_allclose(maps, reference(full_rotary, IDS)["attentions"][0], atol=1e-5)
    assert np.abs(maps - soft.weights).max() > 0.05

    ungated = tmp_path / "ungated"
    shutil.copytree(tiny, ungated)

    def zero_gate_rows(t):  # q_proj per head: 16 query rows then 16 gate rows
        t.view(4, 2, 16, -1)[:, 1] = 0
        return t

    set_tensors(ungated, "self_attn.q_proj.weight", zero_gate_rows)
    off = run(ungated, IDS)
    off_record = off["layers"][3].attention
    np.testing.assert_array_equal(off_record["gate"], 0.5)
    np.testing.assert_array_equal(off_record.weights, record.weights)
    assert np.abs(off_record.output - record.output).max() > 0.05
    np.testing.assert_allclose(off["logits"], reference(ungated, IDS)["logits"], atol=1e-4)


@pytest.mark.reference
def test_router_weights_each_token_top_k_experts_and_the_shared_gate(tiny):
    ours = run(tiny, IDS)
    theirs = transformers_pass(tiny, IDS)
    moe_layers = [0, 2, 3]  # layer 1 is in mlp_only_layers
    assert ["router" in layer.attention for layer in ours["layers"]] == [True, False, True, True]
    assert len(theirs["router"]) == len(moe_layers)
    for i, logits in zip(moe_layers, theirs["router"], strict=True):
        routing = ours["layers"][i].attention["router"]
        assert routing.shape == (len(IDS), 5)  # 4 experts and the shared expert's gate
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        top = np.argsort(-probs, axis=-1)[:, :2]
        chosen = np.take_along_axis(probs, top, -1)
        expected = np.zeros_like(probs)
        np.put_along_axis(expected, top, chosen / chosen.sum(-1, keepdims=True), -1)
        np.testing.assert_allclose(routing[:, :4], expected, atol=1e-5)
        assert ((routing[:, :4] > 0).sum(-1) == 2).all()
        assert ((routing[:, 4] > 0) & (routing[:, 4] < 1)).all()


def test_fixture_matches_transformers_without_torch():
    """The committed fixture (scripts/make_decoder_fixtures.py): the softmax layer's maps and
    the logits as transformers computed them; every linear layer's map times its values is the
    recurrence."""
    expected = np.load(FIXTURE / "expected.npz")
    ids = expected["ids"].tolist()
    ours = run(FIXTURE, ids)
    kinds = [layer.attention.map_kind for layer in ours["layers"]]
    assert kinds == ["mixing", "mixing", "mixing", "weights"]
    maps = np.stack([ours["layers"][3].attention.weights])
    assert maps.shape == expected["attentions"].shape
    np.testing.assert_allclose(maps, expected["attentions"], atol=1e-5)
    np.testing.assert_allclose(ours["logits"][-3:], expected["logits"], atol=1e-4)
    for layer in ours["layers"][:3]:
        record = layer.attention
        q, k, g, beta, v = linear_parts(record)
        np.testing.assert_allclose(record.weights @ v, recurrence(q, k, v, g, beta), atol=2e-6)


def test_experts_are_read_only_when_routed_to():

    fam = family("qwen3_next")
    cfg = json.loads((FIXTURE / "config.json").read_text())
    w = RecordingWeights(FIXTURE, fam.anchor)
    x = fam.embed(w, [5, 17, 3], cfg)  # three tokens, top 2 of 4 experts: some get none
    w.read.clear()
    unread = 0
    for i, layer in enumerate(fam.layers(w, x, cfg)):
        if "router" not in layer.attention:
            continue
        routed = set(np.flatnonzero(layer.attention["router"][:, :-1].any(axis=0)).tolist())
        got = {int(n.split(".")[4]) for n in w.read if n.startswith(f"layers.{i}.mlp.experts.")}
        assert got == routed
        unread += 4 - len(routed)
    assert unread > 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_experts_per_tok": 5}, "num_experts_per_tok 5 is more than num_experts 4"),
        ({"linear_num_value_heads": 3}, "linear_num_value_heads 3 is not a multiple of"),
        ({"layer_types": ["linear_attention"]}, "layer_types must list 2 entries"),
        ({"mlp_only_layers": [-1]}, "mlp_only_layers must be a list of integers ≥ 0, got \\[-1\\]"),
        ({"full_attention_interval": 0}, "full_attention_interval must be a positive integer"),
    ],
)
def test_bad_config_values_are_refused_by_name(change, message):
    cfg = {
        "model_type": "qwen3_next",
        "num_hidden_layers": 2,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "linear_num_key_heads": 2,
        **change,
    }
    with pytest.raises(InputError, match=message):
        Qwen3NextArgs.parse(cfg)


def test_defaults_are_transformers_qwen3_next_config():
    args = Qwen3NextArgs.parse({})
    assert (args.hidden_size, args.num_attention_heads, args.kv_heads, args.head_size) == (
        2048,
        16,
        2,
        256,
    )
    assert args.kinds[:4] == ["linear_attention"] * 3 + ["full_attention"]
    assert (args.linear_num_key_heads, args.linear_num_value_heads) == (16, 32)
    assert (args.num_experts, args.num_experts_per_tok, args.partial_rotary_factor) == (
        512,
        10,
        0.25,
    )


def test_a_strong_negative_mixing_weight_stays_visible_when_a_map_is_shrunk():
    """Grid thumbnails and a heatmap that does not fit max-pool blocks of cells; for a signed
    map they keep each block's value of largest magnitude, so one strongly negative weight
    shades its block at the scale's negative end (' ' without colour), not at 0 ('▒')."""
    import io

    from rich.console import Console

    from attn_cli.trace import Trace

    n = 48
    a = np.zeros((1, 1, n, n))
    a[0, 0, 30, 4] = -1.0  # one strong negative entry …
    a[0, 0, 30, 5] = 0.05  # … beside a small positive one in the same block
    a[0, 0, 40, 40] = 0.5
    trace = Trace.from_attentions([f"t{i}" for i in range(n)], a, kind="mixing")
    for view in ("grid", "heatmap"):
        buf = io.StringIO()
        trace.show(view=view, console=Console(file=buf, width=60, color_system=None))
        assert "▒ ▒" in buf.getvalue(), view  # the block at −1 among zeros (0 shades '▒')
        if view == "grid":
            assert "signed maps: ' ' = −m, '▒' = 0, '█' = +m" in buf.getvalue()


def test_layers_with_different_head_counts_show_the_heads_they_have():
    """The fixture's linear layers have 8 value heads, its softmax layer 4 (Qwen3-Next-80B:
    32 and 16): --head counts up to 8, each layer shows the heads it has, and the head
    detectors leave the softmax layer's missing heads empty (NaN), not 0."""
    from attn_cli.pretrained import load_model

    model = load_model(FIXTURE)
    assert model.dims.heads == 8
    trace = model.trace("the cat sat on the mat", methods="detectors,rollout")
    maps = {(s.layer, s.head): s for s in trace.steps_named("W")}
    assert sorted(h for (layer, h) in maps if layer == 0) == list(range(8))
    assert sorted(h for (layer, h) in maps if layer == 3) == list(range(4))
    assert {maps[(0, 5)].kind, maps[(3, 2)].kind} == {"mixing", "weights"}
    scores = trace.find("prev_token").data
    assert scores.shape == (4, 8)
    assert np.isnan(scores[3, 4:]).all() and np.isfinite(scores[:3]).all()
    assert np.isfinite(scores[3, :4]).all()
    rolled = trace.find("rollout", layer=3).data  # mixing maps enter as shares: rows sum to 1
    np.testing.assert_allclose(rolled.sum(-1), 1.0, atol=1e-5)
    only = model.trace("the cat sat on the mat", layers=3, heads=6)
    assert not only.steps_named("W")  # the softmax layer has no head 6, and a note says so
    assert "layer 3 has 4 heads (0–3): it shows only those" in only.notes


def test_stacked_experts_give_the_same_model(tmp_path):
    """transformers 5 holds a layer's experts stacked (experts.gate_up_proj [E, 2·inter, d],
    experts.down_proj [E, d, inter]); a checkpoint saved that way runs the same, each expert
    still read alone (rows of the stacked tensor)."""
    from safetensors.numpy import load_file, save_file

    tensors = _float32(FIXTURE)
    stacked: dict[str, np.ndarray] = {}
    for name, t in tensors.items():
        if ".mlp.experts." not in name:
            stacked[name] = t
    for layer in (0, 2, 3):
        m = f"model.layers.{layer}.mlp.experts."
        gate_up = [
            np.concatenate(
                [tensors[m + f"{e}.gate_proj.weight"], tensors[m + f"{e}.up_proj.weight"]]
            )
            for e in range(4)
        ]
        stacked[m + "gate_up_proj"] = np.stack(gate_up)
        stacked[m + "down_proj"] = np.stack(
            [tensors[m + f"{e}.down_proj.weight"] for e in range(4)]
        )
    out = tmp_path / "stacked"
    out.mkdir()
    save_file(stacked, str(out / "model.safetensors"))
    for f in ("config.json", "tokenizer.json"):
        shutil.copy(FIXTURE / f, out / f)
    assert "model.layers.0.mlp.experts.gate_up_proj" in load_file(str(out / "model.safetensors"))
    ids = np.load(FIXTURE / "expected.npz")["ids"].tolist()
    np.testing.assert_allclose(run(out, ids)["logits"], run(FIXTURE, ids)["logits"], atol=1e-5)
    fam = family("qwen3_next")
    cfg = json.loads((out / "config.json").read_text())
    w = RecordingWeights(out, fam.anchor)
    for _ in fam.layers(w, fam.embed(w, ids, cfg), cfg):
        pass
    assert not [n for n in w.read if n.endswith(("gate_up_proj", "experts.down_proj"))]


def _float32(directory: Path) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint as float32, by its full name (bf16 widened exactly)."""
    from attn_cli.models.weights import SafetensorsWeights

    w = SafetensorsWeights(directory, "embed_tokens.weight")
    return {"model." + name if name != "lm_head.weight" else name: w[name] for name in w}


def test_heads_over_a_corpus_leaves_missing_heads_empty():
    """`attn-cli heads` on layers with different head counts: the softmax layer's missing heads
    are NaN in every statistic (as the detectors leave them), the others finite; no refusal."""
    from attn_cli.methods.corpus import corpus_statistics
    from attn_cli.methods.corpus_lines import model_runner

    totals = corpus_statistics(
        ["the cat sat on the mat", "a dog ran"], str(FIXTURE), workers=1, progress=False
    )
    means = totals.means()
    assert set(means) == {
        "to_first",
        "to_sep",
        "to_punct",
        "to_prev",
        "to_next",
        "to_self",
        "entropy",
    }
    for name, m in means.items():
        assert m.shape == (4, 8), name
        assert np.isnan(m[3, 4:]).all() and np.isfinite(m[:3]).all(), name
        assert np.isfinite(m[3, :4]).all(), name
    # the present heads' means are those of the lines' own maps (as shares of each row)
    run = model_runner(str(FIXTURE))
    firsts = [run(t)[0][..., :, 0] for t in ("the cat sat on the mat", "a dog ran")]
    want = np.concatenate(firsts, axis=-1).mean(-1)
    np.testing.assert_allclose(means["to_first"][:3], want[:3], atol=1e-6)
    np.testing.assert_allclose(means["to_first"][3, :4], want[3, :4], atol=1e-6)
