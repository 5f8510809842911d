"""A word diff of a revision against its draft that stays fast on long and repetitive text.

Tokens are words and the runs of spaces between them. Each distinct token becomes one
character, so a run of equal tokens is found by comparing string slices (memcmp in C) rather
than token by token in Python. A region is diffed in three steps:

1. common leading and trailing runs are cut off;
2. a large region is split at anchors, tokens that occur exactly once on each side (the
   longest increasing run of them, as patience diff does), and each gap is diffed on its own;
3. what is left goes to Myers' O(ND) algorithm, which finds a shortest edit script in time
   proportional to the length times the number of edits D.

Step 3 is cut off by a work budget shared by the whole diff: a region it cannot finish is
shown as one removed and one added block, and the diff says so in ``note``. Whatever the
text, time is then O(N log N) in its length N plus at most MAX_WORK Myers steps (difflib's
SequenceMatcher is quadratic on repetitive text: 2 s for a 12 KB pair on this machine).
"""

from __future__ import annotations

import bisect
import re
from typing import Any

TOKENS = re.compile(r"\s+|\S+")
MAX_EDITS = 2000
"""The most edits one Myers search may look for before its region is shown coarse."""
MAX_WORK = 500_000
"""Myers steps (one a diagonal a round) for one whole diff: 0.2-0.4 s of Python here."""
MAX_DEPTH = 16
"""How deep anchors may split regions inside regions (hostile text could nest them deeply)."""

Opcode = tuple[bool, int, int, int, int]
"""(equal, i1, i2, j1, j2): old tokens [i1, i2) equal (or are replaced by) new [j1, j2)."""


def run_length(s: str, i: int, t: str, j: int, limit: int) -> int:
    """How many characters ``s[i:]`` and ``t[j:]`` share from the start, at most ``limit``.

    Gallops over slice comparisons, so a long common run costs O(its length) in C and
    O(log of its length) Python steps."""
    if limit <= 0 or s[i] != t[j]:
        return 0
    lo, step = 1, 1  # s[i:i+lo] == t[j:j+lo] is known
    while lo < limit:
        hi = min(lo + step, limit)
        if s[i + lo : i + hi] != t[j + lo : j + hi]:
            while hi - lo > 1:  # the first difference lies in [lo, hi)
                mid = (lo + hi) // 2
                if s[i + lo : i + mid] == t[j + lo : j + mid]:
                    lo = mid
                else:
                    hi = mid
            return lo
        lo, step = hi, step * 2
    return lo


def myers(a: str, b: str, max_d: int) -> tuple[list[Opcode] | None, int]:
    """A shortest edit script from ``a`` to ``b`` as opcodes, or None when it needs more than
    ``max_d`` edits; and the number of steps spent."""
    n, m = len(a), len(b)
    off = max_d + 1
    v = [0] * (2 * max_d + 3)  # v[off + k]: the furthest x reached on diagonal k = x - y
    trace: list[list[int]] = []  # v on diagonals -d-1..d+1 before round d, for the way back
    steps = 0
    for d in range(max_d + 1):
        lo, hi = off - d, off + d
        trace.append(v[lo - 1 : hi + 2])
        steps += d + 1
        for i in range(lo, hi + 1, 2):  # i = off + k
            # down from diagonal k+1 (b[y] inserted) or right from k-1 (a[x] deleted)
            down = i == lo or (i != hi and v[i - 1] < v[i + 1])
            x = v[i + 1] if down else v[i - 1] + 1
            y = x - i + off
            if x < n and y < m and a[x] == b[y]:
                run = run_length(a, x, b, y, min(n - x, m - y))
                x, y = x + run, y + run
            v[i] = x
            if x >= n and y >= m:
                return _backtrack(trace, n, m), steps
    return None, steps


def _backtrack(trace: list[list[int]], n: int, m: int) -> list[Opcode]:
    ops: list[Opcode] = []  # from the end backwards
    x, y = n, m
    for d in range(len(trace) - 1, -1, -1):
        v, base = trace[d], d + 1  # v[base + k] is diagonal k
        k = x - y
        down = k == -d or (k != d and v[base + k - 1] < v[base + k + 1])
        px = v[base + k + 1] if down else v[base + k - 1]
        py = px - (k + 1 if down else k - 1)
        sx = px if down else px + 1  # where the run of equal tokens into (x, y) starts
        if x > sx:
            ops.append((True, sx, x, sx - k, y))
        if d > 0:
            ops.append((False, px, sx, py, sx - k))
        x, y = px, py
    ops.reverse()
    return ops


def _anchors(a: str, b: str) -> list[tuple[int, int]]:
    """Positions (i, j) of tokens found exactly once in ``a`` and once in ``b``, the longest
    run of them in the same order on both sides."""
    count_a: dict[str, int] = {}
    for i, c in enumerate(a):
        count_a[c] = -1 if c in count_a else i
    count_b: dict[str, int] = {}
    for j, c in enumerate(b):
        count_b[c] = -1 if c in count_b else j
    pairs = [(i, count_b[c]) for c, i in count_a.items() if i >= 0 and count_b.get(c, -1) >= 0]
    pairs.sort()
    # longest increasing subsequence of j (patience sorting), O(k log k)
    tails: list[int] = []  # tails[L]: the smallest j ending an increasing run of length L+1
    tail_at: list[int] = []  # index into pairs of that run's end
    back = [-1] * len(pairs)
    for p, (_, j) in enumerate(pairs):
        at = bisect.bisect_left(tails, j)
        if at == len(tails):
            tails.append(j)
            tail_at.append(p)
        else:
            tails[at], tail_at[at] = j, p
        back[p] = tail_at[at - 1] if at else -1
    out: list[tuple[int, int]] = []
    p = tail_at[-1] if tail_at else -1
    while p >= 0:
        out.append(pairs[p])
        p = back[p]
    out.reverse()
    return out


class _Differ:
    def __init__(self, a: str, b: str, max_edits: int, max_work: int) -> None:
        self.a, self.b = a, b
        self.ra, self.rb = a[::-1], b[::-1]
        self.max_edits, self.work = max_edits, max_work
        self.ops: list[Opcode] = []
        self.coarse = False

    def region(self, i1: int, i2: int, j1: int, j2: int, depth: int = 0) -> None:
        a, b = self.a, self.b
        pre = run_length(a, i1, b, j1, min(i2 - i1, j2 - j1))
        if pre:
            self.ops.append((True, i1, i1 + pre, j1, j1 + pre))
            i1, j1 = i1 + pre, j1 + pre
        n, m = len(a), len(b)
        suf = run_length(self.ra, n - i2, self.rb, m - j2, min(i2 - i1, j2 - j1))
        i2, j2 = i2 - suf, j2 - suf
        if i1 == i2 or j1 == j2:
            if i1 < i2 or j1 < j2:
                self.ops.append((False, i1, i2, j1, j2))
        elif not self._split(i1, i2, j1, j2, depth):
            self._myers(i1, i2, j1, j2)
        if suf:
            self.ops.append((True, i2, i2 + suf, j2, j2 + suf))

    def _split(self, i1: int, i2: int, j1: int, j2: int, depth: int) -> bool:
        """Diff a large region gap by gap between its anchors; False when it has none."""
        if depth >= MAX_DEPTH or (i2 - i1) + (j2 - j1) <= self.max_edits:
            return False
        anchors = _anchors(self.a[i1:i2], self.b[j1:j2])
        if not anchors:
            return False
        pi, pj = i1, j1
        for ai, aj in anchors:
            self.region(pi, i1 + ai, pj, j1 + aj, depth + 1)
            self.ops.append((True, i1 + ai, i1 + ai + 1, j1 + aj, j1 + aj + 1))
            pi, pj = i1 + ai + 1, j1 + aj + 1
        self.region(pi, i2, pj, j2, depth + 1)
        return True

    def _myers(self, i1: int, i2: int, j1: int, j2: int) -> None:
        # what the budget left allows: a failed search up to D costs about D * D / 2 steps
        max_d = min(self.max_edits, (i2 - i1) + (j2 - j1), int((2 * self.work) ** 0.5))
        ops, steps = myers(self.a[i1:i2], self.b[j1:j2], max_d)
        self.work = max(0, self.work - steps)
        if ops is None:
            self.coarse = True
            ops = [(False, 0, i2 - i1, 0, j2 - j1)]
        self.ops += [(eq, x1 + i1, x2 + i1, y1 + j1, y2 + j1) for eq, x1, x2, y1, y2 in ops]


def opcodes(
    a: list[str], b: list[str], max_edits: int = MAX_EDITS, max_work: int = MAX_WORK
) -> tuple[list[Opcode], bool]:
    """Opcodes turning tokens ``a`` into ``b`` in order, covering both; the flag is True when
    some region was too different for the budget and is shown as one replaced block."""
    ids: dict[str, int] = {}
    ia = [ids.setdefault(t, len(ids)) for t in a]
    ib = [ids.setdefault(t, len(ids)) for t in b]
    if len(ids) >= 0x110000:  # more distinct words than characters: megabytes of text
        return ([(False, 0, len(a), 0, len(b))] if a or b else []), True
    differ = _Differ("".join(map(chr, ia)), "".join(map(chr, ib)), max_edits, max_work)
    differ.region(0, len(a), 0, len(b))
    return differ.ops, differ.coarse


def _blocks(ops: list[Opcode], a: list[str]) -> list[Opcode]:
    """Adjacent opcodes of one kind merged, and spaces alone between two changes folded into
    them, so a rewritten sentence reads as one removed and one added run, not word by word."""
    out: list[Opcode] = []
    for i, (eq, i1, i2, j1, j2) in enumerate(ops):
        between = 0 < i < len(ops) - 1 and not ops[i - 1][0] and not ops[i + 1][0]
        if eq and between and all(t.isspace() for t in a[i1:i2]):
            eq = False
        if out and out[-1][0] == eq:
            _, i1, _, j1, _ = out.pop()
        out.append((eq, i1, i2, j1, j2))
    return out


def word_diff(
    old: str, new: str, max_edits: int = MAX_EDITS, max_work: int = MAX_WORK
) -> dict[str, Any]:
    """Both sides as [kind, text] runs: kind is "same", "del" (old only) or "add" (new only);
    ``note`` is there when part of it is shown as one replaced block."""
    a, b = TOKENS.findall(old), TOKENS.findall(new)
    ops, coarse = opcodes(a, b, max_edits, max_work)
    left: list[list[str]] = []
    right: list[list[str]] = []
    for eq, i1, i2, j1, j2 in _blocks(ops, a):
        if eq:
            left.append(["same", "".join(a[i1:i2])])
            right.append(["same", "".join(b[j1:j2])])
            continue
        if i2 > i1:
            left.append(["del", "".join(a[i1:i2])])
        if j2 > j1:
            right.append(["add", "".join(b[j1:j2])])
    out: dict[str, Any] = {"old": left, "new": right}
    if coarse:
        out["note"] = (
            "these texts differ in too many places to diff word by word: part of them is "
            "shown as one removed and one added block"
        )
    return out
