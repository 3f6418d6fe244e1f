"""mBART (mbart-large-cc25, mbart-large-50 …): BART with LayerNorm BEFORE each sublayer and a
final LayerNorm per stack (models/_bart.py runs it); the target language comes from the
generation config's forced_bos_token_id."""

from __future__ import annotations

from attn_cli.models._bart import BartArgs, Spec, family

SPEC = Spec(BartArgs, pre_norm=True, sinusoidal=False, layernorm_embedding=True)
FAMILY = family("mbart", ("mbart",), SPEC)
