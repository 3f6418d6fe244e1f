"""attn-cli: see self-attention number by number."""

__version__ = "0.1.0"
