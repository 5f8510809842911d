"""The MCTS search tree as plain data, and the pure functions the mcts loop runs on it.

A tree is ``{node_id: TreeNode}`` in insertion order; the root holds the question and every
other node is one attempt at the whole answer (a first draft under the root, a refinement of
its parent below that). Nothing here samples or records: the loop in ``mcts.py`` does, so
these functions can be tested with exact numbers.

Statistics: a child's own evaluation counts as its first visit (``visits = 1``,
``value_sum = reward``); each simulation then backs one reward up from the expanded node to
the root (``visits += 1``, ``value_sum += reward``). So the root's visits equal the
simulations run, and every node's value is the mean of the rewards backed up through it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from loopwright.loops.graphs.common import Candidate


class TreeNode(Candidate):
    """An attempt (or the root) with its search statistics."""

    children: list[str]
    visits: int
    value_sum: float
    reward: float | None  # own evaluation: LLM value mixed with the verifier score
    llm_value: float | None  # LLM value judgement in 0..1; None if not asked or unparseable


def make_node(cand: Candidate) -> TreeNode:
    """A fresh, unevaluated tree node for ``cand``."""
    return TreeNode(**cand, children=[], visits=0, value_sum=0.0, reward=None, llm_value=None)


def value(node: TreeNode) -> float | None:
    """Mean backed-up reward; None before the first visit."""
    return node["value_sum"] / node["visits"] if node["visits"] else None


def uct(node: TreeNode, parent_visits: int, c_uct: float) -> float:
    """Upper confidence bound of ``node`` under a parent visited ``parent_visits`` times.

    An unvisited node scores +inf so it is tried before any visited sibling.
    """
    if node["visits"] == 0:
        return math.inf
    explore = math.sqrt(math.log(max(parent_visits, 1)) / node["visits"])
    return node["value_sum"] / node["visits"] + c_uct * explore


def is_open(tree: dict[str, TreeNode], node_id: str, max_depth: int) -> bool:
    """Whether a leaf to expand can still be found under ``node_id``.

    Closed: a verified attempt, an attempt at ``max_depth``, or a node whose children are all
    closed.
    """
    node = tree[node_id]
    if node["passed"] or node["depth"] >= max_depth:
        return False
    return not node["children"] or any(is_open(tree, c, max_depth) for c in node["children"])


def select(tree: dict[str, TreeNode], root_id: str, c_uct: float, max_depth: int) -> str | None:
    """The leaf to expand: descend from the root by highest UCT over open children.

    Ties go to the earlier child. None when the whole tree is closed.
    """
    if not is_open(tree, root_id, max_depth):
        return None
    node_id = root_id
    while tree[node_id]["children"]:
        parent = tree[node_id]
        open_children = [c for c in parent["children"] if is_open(tree, c, max_depth)]
        node_id = max(open_children, key=lambda c: uct(tree[c], parent["visits"], c_uct))
    return node_id


def add_children(
    tree: dict[str, TreeNode], parent_id: str, children: Iterable[TreeNode]
) -> dict[str, TreeNode]:
    """A new tree with ``children`` hung under ``parent_id``."""
    new = dict(tree)
    kids = list(children)
    parent = tree[parent_id]
    grown = parent.copy()
    grown["children"] = [*parent["children"], *(k["node_id"] for k in kids)]
    new[parent_id] = grown
    for kid in kids:
        new[kid["node_id"]] = kid
    return new


def path_to_root(tree: dict[str, TreeNode], node_id: str) -> list[str]:
    """``node_id``, its parent, ..., the root."""
    path = [node_id]
    while (parent := tree[path[-1]]["parent_id"]) is not None and parent in tree:
        path.append(parent)
    return path


def backprop(tree: dict[str, TreeNode], node_id: str, reward: float) -> dict[str, TreeNode]:
    """A new tree with ``reward`` backed up from ``node_id`` to the root."""
    new = dict(tree)
    for nid in path_to_root(tree, node_id):
        node = tree[nid].copy()
        node["visits"] += 1
        node["value_sum"] += reward
        new[nid] = node
    return new


def evaluated(node: TreeNode, reward: float, llm_value: float | None) -> TreeNode:
    """``node`` with its own evaluation recorded as its first visit."""
    return {**node, "reward": reward, "llm_value": llm_value, "visits": 1, "value_sum": reward}


def mix_reward(
    llm_value: float | None, score: float | None, value_weight: float, has_verifier: bool
) -> float:
    """``value_weight * llm_value + (1 - value_weight) * verifier score``, both 0..1.

    Without a verifier the LLM value alone counts; a missing (unparseable) value leaves the
    verifier score alone; with neither the reward is 0.
    """
    if not has_verifier or score is None:
        return llm_value if llm_value is not None else 0.0
    if llm_value is None:
        return score
    return value_weight * llm_value + (1 - value_weight) * score


def final_node(tree: dict[str, TreeNode], root_id: str) -> TreeNode | None:
    """A verified attempt if any, else the highest-value attempt (more visits, then earlier)."""
    attempts = [n for nid, n in tree.items() if nid != root_id]
    if not attempts:
        return None
    passed = [n for n in attempts if n["passed"]]
    if passed:
        return passed[0]

    def key(n: TreeNode) -> tuple[float, int]:
        v = value(n)
        if v is None:  # evaluated never (a budget stop mid-simulation): its verifier score
            v = n["reward"] if n["reward"] is not None else (n["score"] or 0.0)
        return v, n["visits"]

    return max(attempts, key=key)  # max keeps the first of equals
