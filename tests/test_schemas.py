"""Every `--json` output validates against the schemas shipped in attn_cli/schema, resolved
locally: the comparison schema refers to the trace schema by a relative $ref, and a registry
that refuses to fetch anything proves validation needs no network."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import numpy as np
import orjson
import pytest
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource

from attn_cli.export import COMPARISON_SCHEMA_PATH, SCHEMA_PATH, dumps_traces
from attn_cli.trace import Axis, Trace
from tests.conftest import SAMPLES, invoke, require

FIXTURES = Path(__file__).resolve().parent / "fixtures"
BERT, GPT2 = FIXTURES / "tiny_bert", FIXTURES / "tiny_gpt2"
SCHEMAS = sorted(SCHEMA_PATH.parent.glob("*.schema.json"))


def refuse(uri: str):
    raise NoSuchResource(ref=uri)  # nothing is ever fetched


def local_registry() -> Registry:
    resources = [orjson.loads(p.read_bytes()) for p in SCHEMAS]
    return Registry(retrieve=refuse).with_resources(  # type: ignore[call-arg]
        (s["$id"], Resource.from_contents(s)) for s in resources
    )


def validator(path: Path) -> jsonschema.Draft202012Validator:
    schema = orjson.loads(path.read_bytes())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=local_registry())


def test_every_shipped_schema_is_a_valid_schema_and_refs_resolve_locally():
    assert {p.name for p in SCHEMAS} >= {
        "trace-v1.schema.json",
        "trace-v2.schema.json",
        "comparison-v1.schema.json",
    }
    comparison = orjson.loads(COMPARISON_SCHEMA_PATH.read_bytes())
    refs = {comparison["properties"][k]["$ref"] for k in ("a", "b")}
    assert refs == {SCHEMA_PATH.name}  # relative: the file beside it
    resolver = local_registry().resolver(base_uri=comparison["$id"])
    assert resolver.lookup(SCHEMA_PATH.name).contents["title"] == "attn-cli trace, version 2"


def json_of(args: list[str]) -> list[dict]:
    r = invoke(args)
    assert r.exit_code == 0, r.stderr
    return [orjson.loads(line) for line in r.stdout.strip().split("\n")]


@pytest.mark.parametrize(
    "args",
    [
        ["explain", "hi how are you", "--json", "-"],
        ["explain", "the cat sat", "--qkv", "--heads", "2", "--steps", "all", "--json", "-"],
        ["explain", "the cat sat", "--model", str(BERT), "--json", "-"],
        ["explain", "the cat sat", "--model", str(GPT2), "--method", "rollout,lens", "--json", "-"],
        [
            "explain",
            "--file",
            str(SAMPLES / "long.txt"),
            "--model",
            str(FIXTURES / "tiny_gemma3"),
            "--layer",
            "1",
            "--rows",
            "100:120",
            "--cols",
            "0:200",
            "--json",
            "-",
        ],
        [
            "explain",
            "the cat sat",
            "--model",
            str(BERT),
            "--method",
            "rollout,flow,norms,alti,detectors",
            "--json",
            "-",
        ],
    ],
)
def test_explain_and_method_exports_validate(args):
    if any("flow" in a for a in args):
        require("scipy")  # attention flow is the optional [flow] extra
    v = validator(SCHEMA_PATH)
    for doc in json_of(args):
        assert doc["version"] == 2
        v.validate(doc)


def test_compare_export_validates_with_its_traces_resolved_locally():
    (doc,) = json_of(["compare", "the bank of the river", "the bank approved", "--json", "-"])
    assert doc["version"] == 1 and doc["a"]["version"] == 2
    validator(COMPARISON_SCHEMA_PATH).validate(doc)
    doc["a"]["steps"][0]["kind"] = "banana"  # the embedded trace is checked too
    with pytest.raises(jsonschema.ValidationError):
        validator(COMPARISON_SCHEMA_PATH).validate(doc)


def test_heads_export_validates(tmp_path):
    corpus = tmp_path / "lines.txt"
    corpus.write_text("the cat sat on the mat.\nthe bank of the river!\n", encoding="utf-8")
    out = tmp_path / "heads.json"
    r = invoke(["heads", str(corpus), "--model", str(BERT), "-j", "1", "--json", str(out)])
    assert r.exit_code == 0, r.stderr
    doc = orjson.loads(out.read_bytes())
    assert doc["config"]["pipeline"] == "heads"
    validator(SCHEMA_PATH).validate(doc)


def test_rectangular_traces_with_axes_validate_and_bad_axes_do_not():
    logits = np.random.default_rng(0).normal(size=(1, 2, 3, 5))
    maps = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    t = Trace.from_attentions(["a", "b", "c"], maps, key_tokens=list("vwxyz"))
    t.axes["patches"] = Axis("patches", "patches", ["p0", "p1"], [(0.0, 0.0), (0.0, 1.0)])
    doc = orjson.loads(dumps_traces([t]))
    v = validator(SCHEMA_PATH)
    v.validate(doc)
    doc["axes"]["source"]["kind"] = "pixels"
    with pytest.raises(jsonschema.ValidationError):
        v.validate(doc)


def test_version_1_sample_validates_against_both_trace_schemas():
    doc = orjson.loads((SAMPLES / "hi.json").read_bytes())
    assert doc["version"] == 1
    validator(SCHEMA_PATH).validate(doc)
    validator(SCHEMA_PATH.with_name("trace-v1.schema.json")).validate(doc)
