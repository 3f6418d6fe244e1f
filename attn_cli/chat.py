"""Chat templates: a prompt wrapped as the model was trained to read a conversation.

The template is the checkpoint's own Jinja2 program (`chat_template` in tokenizer_config.json,
or a GGUF file's `tokenizer.chat_template`), rendered as transformers' apply_chat_template
does: an ImmutableSandboxedEnvironment (templates are untrusted code) with trim_blocks and
lstrip_blocks, the loopcontrols extension, `raise_exception`, `strftime_now`, transformers'
`tojson` (no HTML escaping), a `dict` constructor and a namespace that refuses underscore
names; the special tokens (bos_token, eos_token …) as variables; add_generation_prompt. Jinja2
is an optional extra (`pip install attn-cli[chat]`), imported only here, when a template is
rendered.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from attn_cli.errors import InputError
from attn_cli.gguf import open_gguf

# The special tokens transformers passes to a template (its special_tokens_map).
SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token")


def _token_text(value: Any) -> str | None:
    """A tokenizer_config.json special token: a string, or an AddedToken dict's content."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def template_of(model: Any) -> tuple[str, dict[str, str]]:
    """The model's chat template and its special tokens by name (bos_token …); an InputError
    when it has none."""
    if model.path.is_file():  # a GGUF file
        meta = open_gguf(model.path).metadata
        template = meta.get("tokenizer.chat_template")
        tokens = meta.get("tokenizer.ggml.tokens") or []
        specials: dict[str, str] = {}
        for name in SPECIAL_NAMES:
            i = meta.get(f"tokenizer.ggml.{name.removesuffix('_token')}_token_id")
            if isinstance(i, int) and 0 <= i < len(tokens):
                specials[name] = str(tokens[i])
        where = f"{model.path.name} has no tokenizer.chat_template"
    else:
        path = Path(model.path) / "tokenizer_config.json"
        cfg: dict[str, Any] = {}
        if path.is_file():
            try:
                cfg = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise InputError(f"{path}: not readable JSON ({exc})") from None
        template = cfg.get("chat_template")
        if isinstance(template, list):  # named templates: the default one
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        jinja = Path(model.path) / "chat_template.jinja"
        if template is None and jinja.is_file():
            template = jinja.read_text(encoding="utf-8")
        specials = {n: t for n in SPECIAL_NAMES if (t := _token_text(cfg.get(n))) is not None}
        where = f"{model.name} has no chat_template (tokenizer_config.json, chat_template.jinja)"
    if not isinstance(template, str) or not template.strip():
        raise InputError(f"--chat: {where}; leave out --chat to give the prompt as it is")
    return template, specials


def render(
    template: str,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool = True,
    **variables: Any,
) -> str:
    """The conversation rendered by the template, as transformers' apply_chat_template
    (tokenize=False) renders it."""
    try:
        import jinja2
        import jinja2.ext
        import jinja2.utils
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise InputError(
            "--chat needs Jinja2 to render the chat template: pip install 'attn-cli[chat]'"
        ) from None

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        x: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    class Namespace(jinja2.utils.Namespace):
        """jinja2's namespace, refusing underscore names (as transformers' does)."""

        def __init__(*args: Any, **kwargs: Any) -> None:
            self, rest = args[0], args[1:]
            attrs = dict(*rest, **kwargs)
            for name in attrs:
                Namespace.check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            Namespace.check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def check(name: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"chat templates cannot store underscore names on a namespace ({name!r})"
                )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = dict
    env.globals["namespace"] = Namespace
    try:
        compiled = env.from_string(template)
        return compiled.render(
            messages=messages,
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    except jinja2.exceptions.TemplateError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"--chat: the model's chat template failed: {first}") from None


def chat_prompt(model: Any, prompt: str) -> str:
    """`prompt` as the user's one message in the model's chat template, ready for the answer."""
    template, specials = template_of(model)
    return render(template, [{"role": "user", "content": prompt}], True, **specials)
