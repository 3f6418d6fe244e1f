"""GGUF checkpoints (llama.cpp, Ollama, LM Studio): header validation, HF-named weights
dequantised on access, the file's own tokenizer, and finding GGUF files on this machine.

Nothing heavy is imported here: the ``gguf`` package is imported only to dequantise.
"""

from __future__ import annotations

from attn_cli.gguf.header import GGUFHeader, TensorInfo, read_header
from attn_cli.gguf.locate import discover, is_gguf_spec, resolve_gguf
from attn_cli.gguf.reader import (
    SUPPORTED_TYPES,
    GGUFCheckpoint,
    GGUFWeights,
    open_gguf,
    open_model,
    read_tensor,
)

__all__ = [
    "SUPPORTED_TYPES",
    "GGUFCheckpoint",
    "GGUFHeader",
    "GGUFWeights",
    "TensorInfo",
    "discover",
    "is_gguf_spec",
    "open_gguf",
    "open_model",
    "read_header",
    "read_tensor",
    "resolve_gguf",
]
