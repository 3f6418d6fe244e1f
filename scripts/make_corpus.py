"""Write samples/corpus.txt: 2,000 short English sentences, one per line, for `attn-cli heads`
examples, tests and the benchmark (benchmarks/run.py heads_2000).

    python scripts/make_corpus.py            # write it
    python scripts/make_corpus.py --check    # compare with the committed file

Made from a small grammar with a fixed seed: the same file on every machine. The sentences have
commas, questions and exclamations, so the punctuation statistic has something to measure.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "samples" / "corpus.txt"
SUBJECTS = ["the cat", "a dog", "my sister", "the old man", "our teacher", "the river",
            "a small bird", "the children", "her friend", "the bank", "this machine", "the city"]  # fmt: skip
VERBS = ["saw", "followed", "liked", "painted", "carried", "found", "watched", "remembered",
         "left", "visited", "heard", "moved"]  # fmt: skip
OBJECTS = ["the mat", "a red ball", "the bridge", "an open window", "the long road",
           "a quiet garden", "the morning train", "the last letter", "a new song", "the market"]  # fmt: skip
PLACES = ["near the station", "after the rain", "in the evening", "by the old wall",
          "before breakfast", "at the edge of town", "during the storm", "on the hill"]  # fmt: skip
OPENERS = ["yesterday", "later", "of course", "in fact", "meanwhile", "still"]


def sentence(rng: random.Random) -> str:
    s, v, o = rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS)
    kind = rng.randrange(5)
    if kind == 0:
        return f"{s} {v} {o}."
    if kind == 1:
        return f"{rng.choice(OPENERS)}, {s} {v} {o} {rng.choice(PLACES)}."
    if kind == 2:
        return f"did {s} see {o} {rng.choice(PLACES)}?"
    if kind == 3:
        return f"{s} {v} {o}, and {rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}."
    return f"{s} {v} {o} {rng.choice(PLACES)}!"


def corpus(n: int = 2000, seed: int = 26) -> str:
    rng = random.Random(seed)
    return "".join(sentence(rng) + "\n" for _ in range(n))


if __name__ == "__main__":
    text = corpus()
    if sys.argv[1:] == ["--check"]:
        same = OUT.read_text(encoding="utf-8") == text
        print(f"{OUT}: {'matches' if same else 'DIFFERS'}")
        raise SystemExit(0 if same else 1)
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT} ({len(text):,} bytes)")
