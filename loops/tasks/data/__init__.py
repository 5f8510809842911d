"""Package data: the built-in task sets (``code_tasks.jsonl`` behind ``builtin:code``)."""
