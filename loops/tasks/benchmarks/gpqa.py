"""GPQA-Diamond: four-way multiple choice, the options put in an order drawn per question.

The order comes from a seed per question, derived from the spec's ``seed`` (default 0) and
the question's id (``Record ID``, else its row), so it is the same on every load, differs
across questions, and changes only when the seed does. Each task records its order
(``metadata["permutation"]``: the original option at each position, 0 the correct one) and
its seed; the set records the spec's seed (``SourceInfo.seeds["gpqa_permutation"]``).

The prompt is OpenAI simple-evals' multiple-choice template (lighteval's ``gpqa:diamond``
instruct task uses it too); the reference is the letter of the correct option, graded by
``choice-letter``.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable
from pathlib import Path

from loopwright.loops.tasks.benchmarks.rows import (
    HubCopy,
    Row,
    convert,
    load_rows,
    spec_of,
    task_set,
)
from loopwright.loops.tasks.sources import TaskFileError, task_source
from loopwright.loops.tasks.task import Task
from loopwright.loops.tasks.taskset import TaskSet

GPQA_HUB = (HubCopy("Idavidrein/gpqa", "train", "gpqa_diamond"),)
LETTERS = "ABCD"
TEMPLATE = (
    "Answer the following multiple choice question. The last line of your response should be "
    "of the following format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD. "
    "Think step by step before answering.\n\n{question}\n\nA) {A}\nB) {B}\nC) {C}\nD) {D}"
)
"""simple-evals' QUERY_TEMPLATE_MULTICHOICE."""

_QUESTION = ("Question", "question")
_CORRECT = ("Correct Answer", "correct_answer")
_WRONG = (
    ("Incorrect Answer 1", "incorrect_answer_1"),
    ("Incorrect Answer 2", "incorrect_answer_2"),
    ("Incorrect Answer 3", "incorrect_answer_3"),
)
_ID = ("Record ID", "record_id", "id")


def question_seed(seed: int, question_id: str) -> int:
    """The seed of one question's option order: from the spec's seed and the question id."""
    digest = hashlib.sha256(f"gpqa:{seed}:{question_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def permutation(seed: int, question_id: str) -> list[int]:
    """The original option (0 = correct, 1-3 the incorrect ones) shown at A, B, C, D."""
    order = list(range(4))
    random.Random(question_seed(seed, question_id)).shuffle(order)
    return order


def _clean(text: str) -> str:
    """As simple-evals and lighteval tidy an option: trimmed, double spaces made single."""
    return re.sub(r" {2,}", " ", text.strip())


def _gpqa_task(seed: int) -> Callable[[Row], Task]:
    def make(row: Row) -> Task:
        options = [row.text(*_CORRECT), *(row.text(*names) for names in _WRONG)]
        given = row.get(*_ID)
        qid = str(given) if given is not None else f"row-{row.index}"
        order = permutation(seed, qid)
        choices = [_clean(options[i]) for i in order]
        question = row.text(*_QUESTION).strip()
        prompt = TEMPLATE.format(question=question, **dict(zip(LETTERS, choices, strict=True)))
        meta: dict[str, object] = {
            "permutation": order,
            "permutation_seed": question_seed(seed, qid),
            "seed": seed,
        }
        for key, names in (("domain", ("High-level domain", "domain")),
                           ("subdomain", ("Subdomain", "subdomain")),
                           ("explanation", ("Explanation", "explanation"))):  # fmt: skip
            value = row.get(*names)
            if value is not None:
                meta[key] = value
        if len(set(choices)) < 4:
            raise TaskFileError(f"{row.where}: two options of the question are the same text")
        return Task(
            id=f"gpqa-{qid}" if given is not None else f"gpqa-{row.index}",
            prompt=prompt,
            kind="choice",
            choices=choices,
            reference=LETTERS[order.index(0)],
            metadata=meta,
            public_metadata=[k for k in ("domain", "subdomain") if k in meta],
        )

    return make


@task_source("gpqa-diamond", optional_arg=True)
def load_gpqa_diamond(
    path: Path | None = None,
    seed: int = 0,
    split: str | None = None,
    config: str | None = None,
    revision: str | None = None,
    limit: int | None = None,
) -> TaskSet:
    """GPQA-Diamond (Idavidrein/gpqa, gpqa_diamond): ``Question``, ``Correct Answer``,
    ``Incorrect Answer 1..3``; the options ordered by ``seed`` per question."""
    hub = GPQA_HUB if config is None else (HubCopy(GPQA_HUB[0].id, "train", config),)
    rows = load_rows(
        "gpqa-diamond", path, hub, split=split, config=config if path else None, revision=revision
    )
    tasks = convert(rows.rows, _gpqa_task(seed), limit)
    spec = spec_of("gpqa-diamond", path, seed=seed, split=split, config=config, revision=revision)
    return task_set("gpqa-diamond", tasks, rows, spec=spec, seeds={"gpqa_permutation": seed},
                    template=TEMPLATE,
                    fields={"prompt": "Question", "reference": "Correct Answer",
                            "choices": "Correct Answer,Incorrect Answer 1,Incorrect Answer 2,"
                            "Incorrect Answer 3", "id": "Record ID"})  # fmt: skip


@task_source("gpqa", optional_arg=True)
def load_gpqa(
    path: Path | None = None,
    seed: int = 0,
    split: str | None = None,
    config: str | None = None,
    revision: str | None = None,
    limit: int | None = None,
) -> TaskSet:
    """GPQA (alias of gpqa-diamond; ``config=gpqa_main`` or ``gpqa_extended`` for the others)."""
    return load_gpqa_diamond(path, seed, split, config, revision, limit)
