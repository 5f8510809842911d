"""A model is anything with ``async generate(messages, params, n)``; a FunctionModel makes one
of a plain function, which sees each sample's whole call: the messages, the role it is asked
in, the round, the seed, n. Here, a word-problem solver that errs on purpose on one sample in
three -- enough to watch best-of-n's majority vote repair it.

    python examples/calculator_model.py
"""

import asyncio
import re

from loopwright.loops import FunctionModel, ModelCall, RunConfig, run


def calculator(call: ModelCall) -> str:
    question = call.messages[-1]["content"]
    a, b = (int(x) for x in re.findall(r"\d+", question)[:2])
    value = a * b if "each" in question else a + b
    if call.index % 3 == 2:  # every third sample is off by one
        value += 1
    return f"So {value}. The answer is {value}."


if __name__ == "__main__":
    config = RunConfig(
        loop="best-of-n",
        tasks="builtin:arithmetic?n=5",
        model=FunctionModel(calculator, name="calculator"),
        options={"n": 3, "selector": "majority"},
        verifier="none",
        db="calculator.duckdb",
    )
    result = asyncio.run(run(config))
    print(result.name, result.summary)
