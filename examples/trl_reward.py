"""Train with TRL elsewhere, on loopwright's tasks and checks: a task set as the dataset
``GRPOTrainer`` reads, and loopwright's grader as its reward function.

    from trl import GRPOConfig, GRPOTrainer
    import json

from loopwright.loops import reward_function, task_dataset

    trainer = GRPOTrainer(
        model="path/to/model",
        train_dataset=task_dataset("builtin:arithmetic", limit=8),  # prompt, task_id, task
        reward_funcs=[reward_function(grader="math-answer")],
        args=GRPOConfig(...),
    )

Run as a script, it trains nothing: it makes the call TRL makes each step (every dataset
column by keyword, the completions as chat messages) on two hand-written completions of the
first task and prints their rewards.

    python examples/trl_reward.py
"""

import json

from loopwright.loops import reward_function, task_dataset

if __name__ == "__main__":
    dataset = task_dataset("builtin:arithmetic", limit=8)
    reward = reward_function(grader="math-answer")  # None: the grader of each task's kind

    row = dataset[0]
    question = json.loads(row["task"])["prompt"]  # the keyed task: the grader reads its key
    completions = [  # as GRPOTrainer passes them for a chat dataset
        [{"role": "assistant", "content": "Adding them up, the answer is 15."}],
        [{"role": "assistant", "content": "I think it is 12."}],
    ]
    rewards = reward(
        prompts=[row["prompt"]] * 2,
        completions=completions,
        completion_ids=[[0] * 9, [0] * 6],
        trainer_state=None,
        # every dataset column, one entry per completion
        task_id=[row["task_id"]] * 2,
        task=[row["task"]] * 2,
    )
    print(f"task {row['task_id']}: {question}")
    for completion, r in zip(completions, rewards, strict=True):
        print(f"  reward {r}: {completion[0]['content']!r}")
    reward.close()
