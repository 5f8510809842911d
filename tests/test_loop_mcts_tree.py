"""The MCTS tree as plain data: UCT, selection, backpropagation and rewards, in exact numbers."""

from __future__ import annotations

import math
from typing import Any

import pytest
from loop_testkit import candidate
from loopwright.loops.graphs import mcts_tree as mt


def tnode(nid: str, parent: str | None, depth: int, visits: int = 0, vsum: float = 0.0) -> Any:
    node = mt.make_node(candidate(nid, parent_id=parent, depth=depth))
    node.update(visits=visits, value_sum=vsum)
    return node


def small_tree() -> dict[str, mt.TreeNode]:
    tree = {"r": tnode("r", None, 0, visits=2, vsum=0.7)}
    tree = mt.add_children(tree, "r", [tnode("a", "r", 1, 2, 0.7), tnode("b", "r", 1, 1, 0.2)])
    return tree


def test_uct_is_mean_plus_exploration_and_unvisited_first() -> None:
    tree = small_tree()
    assert mt.uct(tree["a"], 2, 1.0) == pytest.approx(0.35 + math.sqrt(math.log(2) / 2))
    assert mt.uct(tree["b"], 2, 1.0) == pytest.approx(0.2 + math.sqrt(math.log(2)))
    assert mt.uct(tree["a"], 2, 0.0) == pytest.approx(0.35)
    assert mt.uct(tnode("n", "r", 1), 5, 1.0) == math.inf


def test_select_descends_by_uct_and_ties_go_to_the_earlier_child() -> None:
    tree = small_tree()
    assert tree["r"]["children"] == ["a", "b"]
    assert mt.select(tree, "r", 1.0, 4) == "b"  # 0.2 + 0.833 beats 0.35 + 0.589
    assert mt.select(tree, "r", 0.0, 4) == "a"  # pure exploitation
    tree = mt.add_children(tree, "a", [tnode("a1", "a", 2, 1, 0.9), tnode("a2", "a", 2, 1, 0.9)])
    assert mt.select(tree, "r", 0.0, 4) == "a1"
    # An attempt at max_depth is closed; a node whose children are all closed is too.
    assert mt.select(tree, "r", 0.0, 2) == "b"
    tree["b"] = {**tree["b"], "passed": True}  # type: ignore[typeddict-item]
    assert mt.select(tree, "r", 0.0, 2) is None
    assert not mt.is_open(tree, "r", 2)


def test_backprop_adds_the_reward_on_the_path_to_the_root_only() -> None:
    tree = small_tree()
    tree = mt.add_children(tree, "b", [tnode("b1", "b", 2, 1, 0.5)])
    new = mt.backprop(tree, "b", 0.5)
    assert (new["b"]["visits"], new["b"]["value_sum"]) == (2, pytest.approx(0.7))
    assert (new["r"]["visits"], new["r"]["value_sum"]) == (3, pytest.approx(1.2))
    assert mt.value(new["r"]) == pytest.approx(0.4)
    assert new["a"] == tree["a"] and new["b1"] == tree["b1"]
    assert (tree["r"]["visits"], tree["b"]["visits"]) == (2, 1)  # the input is untouched
    assert mt.path_to_root(new, "b1") == ["b1", "b", "r"]
    assert mt.value(tnode("x", None, 0)) is None


def test_reward_mixes_value_and_verifier_score() -> None:
    assert mt.mix_reward(0.8, 0.0, 0.5, True) == pytest.approx(0.4)
    assert mt.mix_reward(0.8, 1.0, 0.25, True) == pytest.approx(0.95)
    assert mt.mix_reward(None, 0.2, 0.5, True) == 0.2  # unparseable value: the score alone
    assert mt.mix_reward(0.6, None, 0.5, False) == 0.6  # no verifier: the value alone
    assert mt.mix_reward(None, None, 0.5, False) == 0.0


def test_final_node_prefers_verified_then_value_then_visits() -> None:
    tree = small_tree()
    assert mt.final_node(tree, "r") is tree["a"]  # 0.35 (2 visits) vs 0.2
    tree = mt.add_children(tree, "b", [tnode("b1", "b", 2, 2, 0.7)])
    assert mt.final_node(tree, "r") is tree["a"]  # equal value and visits: the earlier
    tree["b1"] = {**tree["b1"], "passed": True}  # type: ignore[typeddict-item]
    assert mt.final_node(tree, "r") is tree["b1"]
    assert mt.final_node({"r": tree["r"]}, "r") is None
