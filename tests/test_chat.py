"""Chat templates (attn_cli.chat) rendered as transformers' apply_chat_template renders them: a
Qwen-style and a Gemma-style template written here (the SmolLM2 GGUF's own is checked in
test_generation_real.py), transformers' tojson, raise_exception and the sandbox."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from attn_cli.chat import render, template_of
from attn_cli.errors import InputError
from tests.conftest import require

QWEN = """{%- if tools %}
    {{- '<|im_start|>system\\n' + (messages[0].content if messages[0].role == 'system' else '') }}
    {%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}
    {{- '<|im_end|>\\n' }}
{%- elif messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant") %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

GEMMA = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") -}}
    {{ message['content'] | trim }}{{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""

# Blocks on their own lines (trim_blocks, lstrip_blocks), a namespace, loop controls, tojson of
# text that HTML escaping would change, and the date function.
EXTRAS = """{% set ns = namespace(n=0) %}
  {% for m in messages %}
    {% if m.role == 'system' %}{% continue %}{% endif %}
    {% set ns.n = ns.n + 1 %}
[{{ ns.n }}] {{ m.content | tojson }}
  {% endfor %}
{{ dict(a=1) | tojson }} {{ strftime_now('%Y')|length }}
{% if add_generation_prompt %}>>{% endif %}"""

CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": 'Why is the sky blue? <b>é</b> & "quotes"'},
    {"role": "assistant", "content": "  Rayleigh scattering.  "},
    {"role": "user", "content": "And sunsets?"},
]
SPECIALS = {"bos_token": "<bos>", "eos_token": "<eos>"}


def transformers_render(template: str, messages, generation: bool = True) -> str:
    transformers = require("transformers")
    require("jinja2")
    from tokenizers import Tokenizer, models

    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
        chat_template=template,
        **SPECIALS,
    )
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


@pytest.mark.reference
@pytest.mark.parametrize("template", [QWEN, GEMMA, EXTRAS], ids=["qwen", "gemma", "extras"])
@pytest.mark.parametrize("messages", [CONVERSATION, CONVERSATION[1:2]], ids=["four", "one"])
@pytest.mark.parametrize("generation", [True, False])
def test_templates_render_as_transformers_apply_chat_template(template, messages, generation):
    expected = transformers_render(template, messages, generation)
    assert render(template, messages, generation, **SPECIALS) == expected


def test_rendered_examples_read_as_the_models_expect():
    require("jinja2")
    one = [{"role": "user", "content": "Hi"}]
    assert render(QWEN, one, True) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
        "assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render(GEMMA, one, True, **SPECIALS) == (
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    )
    assert render(EXTRAS, CONVERSATION[1:2], True).startswith('[1] "Why is the sky blue? <b>é</b>')


def test_template_errors_and_escapes_are_one_line_input_errors():
    require("jinja2")
    two_users = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(InputError, match=r"^--chat: the model's chat template failed: Conver"):
        render(GEMMA, two_users)
    for hostile in ("{{ ''.__class__.__mro__ }}", "{% set ns = namespace(_x=1) %}"):
        with pytest.raises(InputError, match=r"^--chat: the model's chat template failed: "):
            render(hostile, [])
    with pytest.raises(InputError, match=r"^--chat: the model's chat template failed: "):
        render("{{ messages.append(1) }}", [])  # immutable: the sandbox refuses changes


def test_a_directorys_template_and_special_tokens(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "chat_template": [
                    {"name": "default", "template": GEMMA},
                    {"name": "x", "template": ""},
                ],
                "bos_token": {"content": "<bos>", "special": True},
                "eos_token": "<eos>",
            }
        )
    )
    model = SimpleNamespace(path=tmp_path, name="tiny")
    assert template_of(model) == (GEMMA, SPECIALS)
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(InputError, match=r"^--chat: tiny has no chat_template"):
        template_of(model)
