"""The viewer's revision-against-draft word diff: correct, shortest where it can be, and
bounded on long and repetitive text (difflib's matcher took 6 s on a 12 KB repetitive pair)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from loopwright.traces.view.diff import myers, opcodes, word_diff


def sides(d: dict[str, Any]) -> tuple[str, str]:
    old = "".join(t for k, t in d["old"] if k != "add")
    new = "".join(t for k, t in d["new"] if k != "del")
    assert {k for k, _ in d["old"]} <= {"same", "del"}
    assert {k for k, _ in d["new"]} <= {"same", "add"}
    # both sides show the same common text, in the same order
    assert [t for k, t in d["old"] if k == "same"] == [t for k, t in d["new"] if k == "same"]
    return old, new


def changed(d: dict[str, Any]) -> tuple[list[str], list[str]]:
    return [t for k, t in d["old"] if k == "del"], [t for k, t in d["new"] if k == "add"]


def lcs(a: str, b: str) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def check_opcodes(ops: list[tuple[bool, int, int, int, int]], a: Any, b: Any) -> None:
    i = j = 0
    for eq, i1, i2, j1, j2 in ops:
        assert (i1, j1) == (i, j) and i1 <= i2 <= len(a) and j1 <= j2 <= len(b)
        if eq:
            assert a[i1:i2] == b[j1:j2]
        i, j = i2, j2
    assert (i, j) == (len(a), len(b))


def test_myers_finds_a_shortest_edit_script() -> None:
    rng = random.Random(7)
    for _ in range(400):
        alphabet = rng.choice(["ab", "abc", "abcdefgh"])
        a = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
        b = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
        ops, _ = myers(a, b, len(a) + len(b))
        assert ops is not None
        check_opcodes(ops, a, b)
        edits = sum(i2 - i1 + j2 - j1 for eq, i1, i2, j1, j2 in ops if not eq)
        assert edits == len(a) + len(b) - 2 * lcs(a, b), (a, b)
        # and the whole pipeline, with budgets small enough to split and to give up
        for max_edits, max_work in ((2, 3), (4, 50), (2000, 500_000)):
            ops, _ = opcodes(list(a), list(b), max_edits, max_work)
            check_opcodes(ops, list(a), list(b))


def test_a_64_kb_repetitive_pair_diffs_exactly_the_words_that_changed() -> None:
    draft = "The answer is 5 because 2 + 3 = 5. " * 1900  # 66 KB, every word repeated
    assert len(draft) > 64 * 1024
    words = draft.split(" ")
    words[len(words) // 3] = "six"  # one word replaced, one inserted, one removed
    words.insert(2 * len(words) // 3, "really")
    del words[-10]
    revision = " ".join(words)
    d = word_diff(draft, revision)
    assert sides(d) == (draft, revision)
    removed, added = changed(d)
    assert sorted(added) == ["really ", "six"] and len(removed) == 2
    assert "note" not in d


def test_two_unrelated_64_kb_repetitive_texts_show_as_one_block_and_say_so() -> None:
    draft = "a b " * 16500
    revision = "c d " * 16500
    d = word_diff(draft, revision)
    assert sides(d) == (draft, revision)
    assert "too many places" in d["note"]
    # a half-changed pair (every other word) is also too many edits for the budget
    d = word_diff(draft, "a c " * 16500)
    assert sides(d) == (draft, "a c " * 16500) and "note" in d


def test_long_prose_with_many_rewritten_sentences_keeps_a_word_diff() -> None:
    rng = random.Random(3)
    vocab = [f"word{i}" for i in range(4000)]
    sentences = [" ".join(rng.choice(vocab) for _ in range(12)) + "." for _ in range(400)]
    rewritten = [
        s if rng.random() > 0.3 else " ".join(rng.choice(vocab) for _ in range(12)) + "."
        for s in sentences
    ]
    draft, revision = " ".join(sentences), " ".join(rewritten)
    assert len(draft) > 25_000
    d = word_diff(draft, revision)
    assert sides(d) == (draft, revision) and "note" not in d
    same = "".join(t for k, t in d["old"] if k == "same")
    for s, r in zip(sentences, rewritten, strict=True):  # every untouched sentence is common
        if s == r:
            assert s in same


def test_a_rewritten_phrase_reads_as_one_removed_and_one_added_run() -> None:
    d = word_diff("So 2 + 3 = 6 and the answer is 6.", "So 2 + 3 = 5 and the answer is 5.")
    assert changed(d) == (["6", "6."], ["5", "5."])
    d = word_diff("Tom had two red apples today.", "Tom had five green pears today.")
    assert changed(d) == (["two red apples"], ["five green pears"])  # spaces folded in


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("", ""),
        ("", "a b"),
        ("a b", ""),
        ("same", "same"),
        ("  \n", "\t"),
        ("\ud83d x", "x \ud83d"),
    ],
)
def test_edge_cases(old: str, new: str) -> None:
    d = word_diff(old, new)
    assert sides(d) == (old, new)
