"""JSON export: the shipped schema, round trips through `show`, atomic writes."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import orjson
import pytest

from attn_cli.export import SCHEMA_PATH, atomic_write, dumps_traces, loads_traces
from tests.conftest import SAMPLES, invoke

SCHEMA = json.loads(SCHEMA_PATH.read_text())


def validate(doc: dict) -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.Draft202012Validator(SCHEMA).validate(doc)


@pytest.mark.parametrize(
    "args",
    [
        ["hi how are you"],
        ["the cat sat on the mat", "--scale", "--special"],
        ["hi how are you", "-e", "random", "--dim", "3", "--seed", "1"],
    ],
)
def test_exports_validate_against_the_shipped_schema(args):
    r = invoke(["explain", *args, "--json", "-"])
    assert r.exit_code == 0, r.stderr
    doc = orjson.loads(r.stdout)
    validate(doc)
    for s in doc["steps"]:
        assert s["shape"] == [len(s["rows"]), len(s["cols"])]
        assert np.array(s["data"]).shape == tuple(s["shape"])


def test_json_lines_each_validate():
    r = invoke(["explain", "--json", "-"], input="hi how are you\nthe cat sat\n")
    for line in r.stdout.strip().split("\n"):
        validate(orjson.loads(line))


def test_schema_rejects_a_broken_trace():
    doc = orjson.loads(invoke(["explain", "hi", "--json", "-"]).stdout)
    doc["steps"][0]["kind"] = "banana"
    with pytest.raises(jsonschema.ValidationError):
        validate(doc)


def test_shipped_sample_export_is_current():
    doc = orjson.loads((SAMPLES / "hi.json").read_bytes())
    validate(doc)
    fresh = orjson.loads(invoke(["explain", "hi how are you", "--json", "-"]).stdout)
    assert doc["tokens"] == fresh["tokens"] and doc["config"] == fresh["config"]
    np.testing.assert_allclose(
        np.array(doc["steps"][2]["data"]), np.array(fresh["steps"][2]["data"]), atol=1e-12
    )


def test_round_trip_keeps_every_number_and_label():
    r = invoke(["explain", "the cat sat on the mat", "--scale", "--json", "-"])
    traces = loads_traces(r.stdout.encode())
    assert dumps_traces(traces) == r.stdout.encode()


@pytest.mark.parametrize(
    "args",
    [
        ["hi how are you"],
        ["the cat sat on the mat", "--scale"],
    ],
)
def test_show_renders_exactly_what_explain_printed(tmp_path, args):
    path = tmp_path / "t.json"
    shown = invoke(["explain", *args, "--json", str(path), "--width", "90", "-p", "3"])
    again = invoke(["show", str(path), "--width", "90", "-p", "3"])
    assert shown.exit_code == 0 and again.exit_code == 0, again.stderr
    assert again.stdout == shown.stdout


def test_show_reads_json_lines(tmp_path):
    path = tmp_path / "two.jsonl"
    invoke(["explain", "--json", str(path)], input="hi how are you\nthe cat sat\n")
    r = invoke(["show", str(path)])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.count("W_raw = X·Xᵀ") == 2


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    target.write_bytes(b"old")

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("attn_cli.export.os.replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, b"new contents")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_write_to_dev_null_does_not_replace_the_device():
    atomic_write("/dev/null", b"x")
    import os
    import stat

    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_npz_export_holds_every_step(tmp_path):
    path = tmp_path / "t.npz"
    r = invoke(["explain", "hi how are you", "--npz", str(path), "--json", "-"])
    doc = orjson.loads(r.stdout)
    with np.load(path) as z:
        names = sorted(k for k in z.files if not k.endswith("trace.json"))
        assert names == ["0/000_X", "0/001_W_raw", "0/002_W", "0/003_Y"]
        np.testing.assert_array_equal(z["0/002_W"], np.array(doc["steps"][2]["data"]))
        meta = orjson.loads(z["0/trace.json"].tobytes())
        assert meta["tokens"] == ["hi", "how", "are", "you"] and "data" not in meta["steps"][0]
