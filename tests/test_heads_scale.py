"""`attn-cli heads` beyond one machine (issue 26): the exact merge, a local Dask cluster (a
scheduler and two worker processes on 127.0.0.1, started and stopped here) giving the very
numbers of the one-machine run, a worker killed mid-run, --resume after an interruption,
globs and JSON Lines, the surface statistics against an independent loop, the figure, and the
JSON against the shipped schema."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import unicodedata
import xml.etree.ElementTree as ET
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import attn_cli
from attn_cli.errors import InputError
from attn_cli.methods.corpus import corpus_statistics
from attn_cli.methods.corpus_input import Corpus
from attn_cli.methods.corpus_ledger import SHIFT, from_units, to_units
from attn_cli.methods.corpus_lines import STATISTICS, Totals
from tests.conftest import SAMPLES, invoke, minilm_dir, require, run_with_stderr_on_a_terminal

BERT = Path(__file__).resolve().parent / "fixtures" / "tiny_bert"


def sentences(n: int) -> list[str]:
    """The first n sentences of samples/corpus.txt (scripts/make_corpus.py)."""
    return (SAMPLES / "corpus.txt").read_text(encoding="utf-8").splitlines()[:n]


def same(a: Totals, b: Totals) -> None:
    """Bit for bit: every sum, every count, every mean."""
    assert a.sums.keys() == b.sums.keys() == set(STATISTICS)
    for k in STATISTICS:
        assert a.sums[k].tobytes() == b.sums[k].tobytes(), k
        assert np.array_equal(a.means()[k], b.means()[k], equal_nan=True), k
    assert (a.counts, a.lines, a.tokens, a.skipped) == (b.counts, b.lines, b.tokens, b.skipped)


# --- the exact merge ------------------------------------------------------------------------


def test_units_are_exact_and_their_sum_is_order_free():
    assert to_units(np.array([0.5]))[0] == 1 << (SHIFT - 1)
    assert to_units(np.array([2.0**-1074]))[0] == 1  # the smallest subnormal
    assert to_units(np.array([-3.0]))[0] == -3 << SHIFT
    rng = np.random.default_rng(0)
    values = rng.random(200) * 10.0 ** rng.integers(-300, 3, 200)
    exact = sum(Fraction(float(v)) for v in values)
    forward = sum(to_units(values[i : i + 1])[0] for i in range(200))
    backward = sum(to_units(values[i : i + 1])[0] for i in reversed(range(200)))
    assert forward == backward == exact * 2**SHIFT
    assert from_units(np.array([forward], dtype=object))[0] == float(exact)  # correctly rounded
    with pytest.raises(ValueError, match="not finite"):
        to_units(np.array([np.nan]))


def test_batches_merged_in_any_order_give_the_same_totals():
    from attn_cli.methods.corpus_ledger import Ledger

    rng = np.random.default_rng(1)
    batches = []
    for _ in range(12):
        t = Totals()
        for k in STATISTICS:
            t.sums[k] = rng.random((2, 3)) * 10.0 ** rng.integers(-8, 3)
            t.counts[k] = int(rng.integers(1, 50))
        t.lines, t.tokens = 3, 40
        batches.append(t)
    results = []
    for order in (range(12), reversed(range(12)), [5, 0, 11, 3, 1, 2, 4, 6, 10, 7, 9, 8]):
        ledger = Ledger({})
        for i in order:
            ledger.record(i, batches[i])
        results.append(ledger.rounded_sums())
    for k in STATISTICS:
        assert results[0][k].tobytes() == results[1][k].tobytes() == results[2][k].tobytes()
        want = [math.fsum(b.sums[k].ravel()[j] for b in batches) for j in range(6)]
        assert results[0][k].ravel().tolist() == want  # fsum: the correctly rounded sum too


# --- a local Dask cluster -------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    """A scheduler and two worker processes (one thread each) on 127.0.0.1."""
    distributed = require("distributed")
    with distributed.LocalCluster(
        n_workers=2,
        processes=True,
        threads_per_worker=1,
        host="127.0.0.1",
        dashboard_address=None,
    ) as c:
        yield c


def test_cluster_gives_the_one_machine_numbers_on_tiny_bert(cluster, tmp_path):
    lines = sentences(40) + ["", "hi", "a " * 600]  # a blank line, one token, one too long
    local = corpus_statistics(lines, str(BERT), workers=2, chunk_size=3, progress=False)
    assert local.skipped == 1 and local.lines == 41
    done: list[int] = []
    remote = corpus_statistics(
        lines, str(BERT), chunk_size=3, scheduler=cluster.scheduler_address, progress=done.append
    )
    same(local, remote)
    assert sum(done) == len(lines)
    in_order = corpus_statistics(lines, str(BERT), workers=1, chunk_size=3, progress=False)
    assert in_order.counts == local.counts
    for k in STATISTICS:  # in this process BLAS may use several threads: the same to ~1e-12
        np.testing.assert_allclose(in_order.means()[k], local.means()[k], rtol=1e-9)


def test_cluster_from_the_cli_writes_the_same_json(cluster, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(sentences(30)) + "\n", encoding="utf-8")
    outs = []
    for extra in (["-j", "2"], ["--scheduler", cluster.scheduler_address]):
        out = tmp_path / f"{len(outs)}.json"
        r = invoke(["heads", str(corpus), "-m", str(BERT), "--json", str(out), *extra])
        assert r.exit_code == 0, r.output
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_cluster_gives_the_one_machine_numbers_on_minilm(cluster):
    minilm_dir()
    lines = sentences(24)
    local = corpus_statistics(lines, "minilm", workers=2, chunk_size=4, progress=False)
    remote = corpus_statistics(
        lines, "minilm", chunk_size=4, scheduler=cluster.scheduler_address, progress=False
    )
    same(local, remote)
    assert local.means()["to_first"].shape == (6, 12)


def test_a_worker_killed_mid_run_costs_only_its_batch(cluster):
    from distributed import Client

    lines = sentences(48)
    local = corpus_statistics(lines, str(BERT), workers=2, chunk_size=2, progress=False)
    with Client(cluster.scheduler_address) as client:
        pids = sorted(client.run(os.getpid).values())
    killed: list[int] = []

    def kill_one(count: int) -> None:
        if not killed:  # after the first batch, while the others are in flight
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    remote = corpus_statistics(
        lines, str(BERT), chunk_size=2, scheduler=cluster.scheduler_address, progress=kill_one
    )
    assert killed
    same(local, remote)


class Interrupted(Exception):
    pass


def test_resume_after_an_interrupted_run_gives_the_same_numbers(cluster, tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("\n".join(sentences(36)) + "\n", encoding="utf-8")
    corpus = Corpus.find([path])
    partial = tmp_path / "partial.json"
    fresh = corpus_statistics(corpus.lines(), str(BERT), workers=2, chunk_size=3, progress=False)

    seen: list[int] = []

    def stop_after_four(count: int) -> None:
        seen.append(count)
        if len(seen) == 4:
            raise Interrupted

    digest = corpus.digest()
    with pytest.raises(Interrupted):  # on the cluster, saving after every batch
        corpus_statistics(
            corpus.lines(),
            str(BERT),
            chunk_size=3,
            scheduler=cluster.scheduler_address,
            resume=partial,
            input_digest=digest,
            checkpoint_every=1,
            progress=stop_after_four,
        )
    saved = json.loads(partial.read_text())
    done_batches = sum(b - a for a, b in saved["done"])
    assert done_batches == 4 and saved["lines"] == 12
    rest: list[int] = []  # resumed on this machine: only what is left is run
    resumed = corpus_statistics(
        corpus.lines(),
        str(BERT),
        workers=2,
        chunk_size=3,
        resume=partial,
        input_digest=digest,
        progress=rest.append,
    )
    assert sum(rest) == 36 - 12
    same(fresh, resumed)

    # the CLI: continuing the finished run redoes nothing and prints the same statistics
    out_fresh, out_resumed = tmp_path / "fresh.json", tmp_path / "resumed.json"
    common = ["heads", str(path), "-m", str(BERT), "--batch-size", "3", "-j", "2"]
    assert invoke([*common, "--json", str(out_fresh)]).exit_code == 0
    r = invoke([*common, "--resume", str(partial), "--json", str(out_resumed)])
    assert r.exit_code == 0, r.output
    assert out_fresh.read_bytes() == out_resumed.read_bytes()

    # another corpus (or batch size) with the same partial file is refused, in one line
    other = tmp_path / "other.txt"
    other.write_text("the cat sat\n", encoding="utf-8")
    r = invoke(
        ["heads", str(other), "-m", str(BERT), "--batch-size", "3", "--resume", str(partial)]
    )
    assert r.exit_code == 2 and r.output.count("\n") == 1
    assert "--resume" in r.output and "another run (input differs)" in r.output
    r = invoke([*common[:-4], "--resume", str(partial)])  # batch size 8
    assert r.exit_code == 2 and "batch_size differs" in r.output


def test_scheduler_without_distributed_says_what_to_install(monkeypatch, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat\n", encoding="utf-8")
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    r = invoke(["heads", str(corpus), "-m", str(BERT), "--scheduler", "tcp://127.0.0.1:8786"])
    assert r.exit_code == 2 and r.output.count("\n") == 1
    assert "--scheduler needs Dask's distributed scheduler: pip install 'attn-cli[cluster]'" in (
        r.output
    )
    with pytest.raises(InputError, match=r"^scheduler needs"):
        corpus_statistics(["the cat"], str(BERT), scheduler="tcp://127.0.0.1:8786", progress=False)


# --- input ----------------------------------------------------------------------------------


def test_globs_and_json_lines_read_the_same_lines_as_one_file(tmp_path):
    lines = sentences(20)
    whole = tmp_path / "whole.txt"
    whole.write_text("\n".join(lines) + "\n", encoding="utf-8")
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, start in enumerate(range(0, 20, 7)):  # shard_0, shard_1, shard_2: sorted order
        (shards / f"shard_{2 - i}.txt").write_text(
            "\n".join(lines[start : start + 7]) + "\n", encoding="utf-8"
        )
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps({"id": i, "text": t}) for i, t in enumerate(lines)) + "\n",
        encoding="utf-8",
    )
    shards_corpus = Corpus.find([str(shards / "*.txt")])
    assert [p.name for p in shards_corpus.paths] == ["shard_0.txt", "shard_1.txt", "shard_2.txt"]
    # shard_0 holds the last lines: globbed in sorted order the lines come shuffled by shard
    want = lines[14:] + lines[7:14] + lines[:7]
    assert list(shards_corpus.lines()) == want and shards_corpus.count() == 20
    assert list(Corpus.find([jsonl], field="text").lines()) == lines

    outs = {}
    for name, args in {
        "file": [str(whole)],
        "jsonl": [str(jsonl), "--field", "text"],
    }.items():
        out = tmp_path / f"{name}.json"
        r = invoke(["heads", *args, "-m", str(BERT), "-j", "1", "--json", str(out)])
        assert r.exit_code == 0, r.output
        outs[name] = json.loads(out.read_text())
    assert outs["file"]["steps"] == outs["jsonl"]["steps"]


@pytest.mark.parametrize(
    "content,args,message",
    [
        ('{"text": "a"}\n', [], "is JSON Lines: say which field holds the text with --field"),
        ('{"text": "a"}\n{"body": "b"}\n', ["--field", "text"], "line 2 has no field 'text'"),
        ('{"text": "a"}\nnot json\n', ["--field", "text"], "line 2 is not JSON"),
        ('{"text": 3}\n', ["--field", "text"], "field 'text' is int, not text"),
        ("[1]\n", ["--field", "text"], "line 1 is not a JSON object"),
    ],
)
def test_bad_json_lines_are_one_line_errors(tmp_path, content, args, message):
    path = tmp_path / "c.jsonl"
    path.write_text(content, encoding="utf-8")
    r = invoke(["heads", str(path), "-m", str(BERT), "-j", "1", *args])
    assert r.exit_code == 2 and message in r.output and r.output.count("\n") == 1


def test_a_glob_matching_nothing_is_a_one_line_error(tmp_path):
    r = invoke(["heads", str(tmp_path / "none-*.txt"), "-m", str(BERT)])
    assert r.exit_code == 2 and "no file matches" in r.output and r.output.count("\n") == 1


# --- the surface statistics -----------------------------------------------------------------


def punctuation(token: str) -> bool:
    t = token.replace("##", "").strip()
    return bool(t) and all(unicodedata.category(c).startswith("P") for c in t)


def test_surface_statistics_of_a_hand_made_corpus_match_an_independent_loop():
    lines = ["the cat sat on the mat.", "hi, how are you?", "the bank of the river!", "cat"]
    got = corpus_statistics(lines, str(BERT), workers=1, chunk_size=2, progress=False).means()
    model = attn_cli.load_model(BERT)
    sums: dict[str, float | np.ndarray] = {k: 0.0 for k in STATISTICS}
    counts = dict.fromkeys(STATISTICS, 0)
    for line in lines:
        t = model.trace(line, layers="all", heads="all")
        a = t.attention()  # (layers, heads, n, n)
        n = a.shape[-1]
        for i in range(n):
            row = a[..., i, :]
            sums["to_first"] += row[..., 0]
            sums["to_sep"] += sum(
                (row[..., j] for j in range(1, n) if t.tokens[j] == "[SEP]"), np.zeros(a.shape[:2])
            )
            sums["to_punct"] += sum(
                (row[..., j] for j in range(n) if punctuation(t.tokens[j])), np.zeros(a.shape[:2])
            )
            sums["to_self"] += row[..., i]
            sums["entropy"] += -(row * np.log(np.where(row > 0, row, 1))).sum(-1)
            if i > 0:
                sums["to_prev"] += row[..., i - 1]
                counts["to_prev"] += 1
            if i < n - 1:
                sums["to_next"] += row[..., i + 1]
                counts["to_next"] += 1
        for k in ("to_first", "to_sep", "to_punct", "to_self", "entropy"):
            counts[k] += n
    assert counts["to_first"] == 9 + 8 + 8 + 3  # [CLS] the cat sat on the mat . [SEP], …
    for k in STATISTICS:
        np.testing.assert_allclose(got[k], sums[k] / counts[k], rtol=1e-6, atol=1e-7)
    assert got["to_punct"].min() > 0  # the corpus has punctuation: every head gives it some


def test_layers_and_heads_restrict_the_output(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(sentences(6)) + "\n", encoding="utf-8")
    full, part = tmp_path / "full.json", tmp_path / "part.json"
    base = ["heads", str(corpus), "-m", str(BERT), "-j", "1", "--json"]
    assert invoke([*base, str(full)]).exit_code == 0
    r = invoke([*base, str(part), "--layers", "1", "--heads", "0"])
    assert r.exit_code == 0, r.output
    f, p = (json.loads(x.read_text()) for x in (full, part))
    for sf, sp in zip(f["steps"], p["steps"], strict=True):
        assert sp["rows"] == ["L1"] and sp["cols"] == ["H0"]
        assert sp["data"] == [[sf["data"][1][0]]]
    r = invoke([*base, str(part), "--layers", "2"])
    assert r.exit_code == 2 and "--layers 2: a layer (0–1)" in r.output


def test_heads_json_validates_against_the_shipped_schema(tmp_path):
    jsonschema = require("jsonschema")
    from attn_cli import export

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(sentences(5)) + "\n", encoding="utf-8")
    out = tmp_path / "s.json"
    r = invoke(["heads", str(corpus), "-m", str(BERT), "-j", "1", "--json", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert doc["version"] == export.VERSION  # written under the schema export ships with
    jsonschema.validate(doc, json.loads(export.SCHEMA_PATH.read_text()))
    assert [s["name"] for s in doc["steps"]] == list(STATISTICS)


def test_the_figure_has_a_point_per_head_and_a_line_per_statistic(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(sentences(6)) + "\n", encoding="utf-8")
    svg, stats = tmp_path / "surface.svg", tmp_path / "stats.json"
    r = invoke(
        ["heads", str(corpus), "-m", str(BERT), "-j", "1", "--svg", str(svg), "--width", "100"]
        + ["--json", str(stats)]
    )
    assert r.exit_code == 0, r.output
    root = ET.fromstring(svg.read_text())
    ns = "{http://www.w3.org/2000/svg}"
    heads = root.findall(f".//{ns}circle[@class='head']")
    assert len(heads) == 7 * 2 * 2  # 7 statistics × 2 layers × 2 heads (tiny BERT)
    assert {(c.get("data-layer"), c.get("data-head")) for c in heads} == {
        ("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")
    }  # fmt: skip
    assert len(root.findall(f".//{ns}polyline[@class='mean']")) == 7
    # and in the terminal: the surface view after the tables
    assert "x = layer, y = the statistic" in r.output and "to_first: first token" in r.output
    assert "●" in r.output
    shown = invoke(["show", str(stats), "--view", "surface", "--width", "100"])
    assert shown.exit_code == 0
    chart = r.output[r.output.index("x = layer, y = the statistic") :]
    assert chart in shown.output  # drawn again from the trace alone


def test_the_bar_shows_sentences_per_second_on_a_terminal_only(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(sentences(30)) + "\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "attn_cli", "heads", str(corpus), "-m", str(BERT), "-j", "1"]
    cmd += ["--json", "-", "--batch-size", "2"]
    env = {**os.environ, "ATTN_CLI_PROGRESS_DELAY": "0", "TERM": "xterm-256color"}
    piped = subprocess.run(cmd, capture_output=True, env=env, check=True)
    assert piped.stderr == b""
    code, out, seen = run_with_stderr_on_a_terminal(cmd, env)
    assert code == 0 and out == piped.stdout
    assert b"sentences/s" in seen and b"/30" in seen, seen[-400:]
