"""Embedding sources: the bundled table's fidelity, files, and their failure modes."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from attn_cli import attention as att
from attn_cli.embeddings import bundled_embeddings
from tests.conftest import SAMPLES, invoke, minilm_dir


def test_bundled_table_is_within_1e3_of_full_precision():
    """W (and W_raw, Y) from the int8 table vs the float32 checkpoint, on every sample."""
    from safetensors.numpy import load_file

    from attn_cli.tokenizer import load_tokenizer, tokenize

    full = load_file(str(minilm_dir() / "model.safetensors"))["embeddings.word_embeddings.weight"]
    tok = load_tokenizer()
    texts = (SAMPLES / "sentences.txt").read_text().splitlines()
    texts.append((SAMPLES / "long.txt").read_text()[:2000])
    worst = 0.0
    for text in texts:
        _, ids = tokenize(tok, text)
        exact = att.toy_self_attention(full[ids].astype(np.float64))
        approx = att.toy_self_attention(bundled_embeddings(ids))
        worst = max(worst, float(np.abs(exact.W - approx.W).max()))
        # Y mixes rows of X, so its error is bounded by X's quantisation error (≤ 4.2e-3);
        # the scales keep each vector's length, so W_raw's diagonal is exact.
        assert np.abs(exact.Y - approx.Y).max() <= 5e-3
        assert np.abs(exact.W_raw - approx.W_raw).max() <= 1e-2
        np.testing.assert_allclose(np.diag(approx.W_raw), np.diag(exact.W_raw), rtol=1e-6)
    assert worst <= 1e-3


def test_bundled_table_shape_and_size():
    from attn_cli.embeddings import BUNDLED_Q, BUNDLED_SCALE

    q = np.load(BUNDLED_Q, mmap_mode="r")
    assert q.shape == (30522, 384) and q.dtype == np.int8
    assert BUNDLED_Q.stat().st_size + BUNDLED_SCALE.stat().st_size <= 12_000_000


def _json(args):
    r = invoke(["explain", *args, "--json", "-"])
    assert r.exit_code == 0, r.stderr
    return orjson.loads(r.stdout)


def test_npz_with_one_array(tmp_path):
    table = np.zeros((30522, 3))
    table[7632] = [1, 2, 3]
    np.savez(tmp_path / "e.npz", anything=table)
    doc = _json(["hi", "-e", str(tmp_path / "e.npz")])
    assert doc["steps"][0]["data"] == [[1.0, 2.0, 3.0]]
    assert len(doc["config"]["embeddings_sha256"]) == 64


def test_glove_text_file_and_missing_tokens(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text("hi 1 0\nhow 0 1\nyou 0.5 0.5\n")
    doc = _json(["hi how are you", "-e", str(path)])
    x = np.array(doc["steps"][0]["data"])
    np.testing.assert_array_equal(x, [[1, 0], [0, 1], [0, 0], [0.5, 0.5]])
    assert doc["notes"] == [
        "glove.txt has no vector for 1 of 4 tokens (are); they got zero vectors, "
        "so their raw scores are 0 and they attend uniformly"
    ]
    w = np.array(doc["steps"][2]["data"])
    np.testing.assert_allclose(w[2], [0.25] * 4)
    out = invoke(["explain", "hi how are you", "-e", str(path)]).stdout
    assert "note: glove.txt has no vector for 1 of 4 tokens" in out


def test_word2vec_header_is_skipped(tmp_path):
    path = tmp_path / "w2v.txt"
    path.write_text("3 2\nhi 1 0\nhow 0 1\n")
    doc = _json(["hi how", "-e", str(path)])
    assert doc["steps"][0]["data"] == [[1.0, 0.0], [0.0, 1.0]]
    assert doc["notes"] == []


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda p: np.save(p / "e.npy", np.full((30522, 2), np.nan)),
            "e.npy: the vector for token 'hi' (id 7632) contains NaN or inf",
        ),
        (
            lambda p: np.save(p / "e.npy", np.ones(10)),
            "e.npy has shape (10,): an embedding table must be 2-D (vocab × dim)",
        ),
        (
            lambda p: np.save(p / "e.npy", np.ones((10, 2))),
            "e.npy has 10 rows but token id 7632 needs row 7632 (row i must be the vector of token id i)",
        ),
        (
            lambda p: np.save(p / "e.npy", np.ones((30522, 2), dtype=complex)),
            "e.npy has dtype complex128: embeddings must be real numbers",
        ),
        (
            lambda p: np.save(
                p / "e.npy", np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True
            ),
            "e.npy holds Python objects (pickle), which are never loaded",
        ),
        (
            lambda p: (p / "e.npy").write_bytes(b"\x93NUMPY garbage"),
            "e.npy is not a readable numpy file",
        ),
        (
            lambda p: (p / "e.txt").write_text("hi 1 2\nhow 1\n"),
            "e.txt line 2: 1 numbers, earlier lines have 2",
        ),
        (lambda p: (p / "e.txt").write_text("hi one two\n"), "e.txt line 1: not a list of numbers"),
        (
            lambda p: (p / "e.txt").write_bytes(b"\xff\xfe\x00junk"),
            "e.txt is neither .npy/.npz nor a UTF-8 word2vec/GloVe text file",
        ),
    ],
)
def test_bad_embedding_files_are_one_line_errors(tmp_path, make, message):
    make(tmp_path)
    path = next(tmp_path.iterdir())
    r = invoke(["explain", "hi how", "-e", str(path)])
    assert r.exit_code == 2
    assert r.stderr.startswith(f"attn-cli: error: {message}")
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_missing_embeddings_file():
    r = invoke(["explain", "hi", "-e", "/nonexistent/e.npy"])
    assert r.exit_code == 2
    assert r.stderr == (
        "attn-cli: error: --embeddings: /nonexistent/e.npy does not exist "
        "(use 'minilm', 'random', or a .npy/.npz/.txt file)\n"
    )


@pytest.mark.parametrize(
    ("dim", "message"),
    [
        ("0", "--dim must be between 1 and 65536, got 0"),
        ("-3", "--dim must be between 1 and 65536, got -3"),
        ("100000000", "--dim must be between 1 and 65536, got 100000000"),
    ],
)
def test_bad_dim(dim, message):
    r = invoke(["explain", "hi", "-e", "random", "--dim", dim])
    assert r.exit_code == 2
    assert r.stderr == f"attn-cli: error: {message}\n"
