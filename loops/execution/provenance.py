"""What a run ran on: its provenance record (``runs.provenance``).

Written once when a run is created, read back by ``loopwright runs --show NAME``, and
checked when the run is resumed: a task source whose rows now hash differently refuses to
resume (the answers of the first half and the second would not be of the same tasks).

Everything here is read cheaply and never fails a run: a package that is not installed, a
missing ``git`` or ``nvidia-smi``, a model whose chat template is not known each read as
null. Package versions come from the installed metadata (nothing is imported for them),
and the GPU from torch only when torch is already imported.
"""

from __future__ import annotations

__all__ = [
    "PACKAGES",
    "CodeVersion",
    "Machine",
    "Provenance",
    "ResumeRecord",
    "build_provenance",
    "chat_template_sha256",
    "code_version",
    "machine",
    "package_versions",
    "prompt_hashes",
    "resume_record",
    "source_at",
    "stored_rows_sha256",
]

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loopwright.loops.tasks import SourceInfo, load_task_set
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from loopwright.loops.execution.run_config import RunConfig

PACKAGES = (
    "litellm",
    "langgraph",
    "math-verify",
    "transformers",
    "trl",
    "torch",
    "xllamacpp",
    "datasets",
    "duckdb",
    "pydantic",
)
"""The packages whose versions shape a run's results (by distribution name)."""

PROMPT_PACKAGES = ("loopwright.loops.prompts", "loopwright.tools.prompts")
"""Where the prompt templates a run may use live: the loops' and the tools' (the judge's)."""

_SUBPROCESS_TIMEOUT_S = 5.0


class CodeVersion(BaseModel):
    """Loopwright itself: its installed version, and the git commit of its source tree when
    it runs from a checkout (``dirty``: tracked files differ from that commit)."""

    model_config = ConfigDict(frozen=True)

    version: str
    commit: str | None = None
    dirty: bool | None = None


class Machine(BaseModel):
    """Where the run's process ran."""

    model_config = ConfigDict(frozen=True)

    platform: str
    python: str
    cpus: int | None = None
    memory_bytes: int | None = None
    gpu: str | None = None


class ResumeRecord(BaseModel):
    """Where a later session that resumed the run ran (the record of its creation stays)."""

    at: datetime
    loopwright: CodeVersion
    packages: dict[str, str | None]
    machine: Machine


class Provenance(BaseModel):
    """``runs.provenance``: what a run ran on."""

    source: dict[str, Any] = Field(
        description="The task source (loops.tasks.SourceInfo as JSON): kind, location, "
        "config, split, revision, rows_sha256, seeds, template_sha256, fields, spec."
    )
    tasks: int = Field(description="How many tasks the run has (the rows hashed).")
    limit: int | None = Field(description="The run's --limit when it was made.")
    seeds: dict[str, int] = Field(
        description="The run seed and every seed of a shuffle or permutation of the source."
    )
    prompts_sha256: str = Field(description="Hash of every prompt template file a loop reads.")
    prompt_files: dict[str, str] = Field(description="Each prompt template file's sha256.")
    chat_template_sha256: str | None = Field(
        None, description="The run model's chat template hash, when known (a local GGUF's)."
    )
    chat_templates: dict[str, str | None] = Field(
        default_factory=dict, description="Chat template hash per model the run uses."
    )
    loopwright: CodeVersion
    packages: dict[str, str | None]
    machine: Machine
    recorded_at: datetime
    resumes: list[ResumeRecord] = Field(default_factory=list)


# -- the task source -------------------------------------------------------------------------


def source_at(cfg: RunConfig, limit: int | None) -> SourceInfo:
    """The source record of ``cfg``'s tasks under another ``limit`` (a resumed run whose
    limit changed is checked against the rows it was made on)."""
    return load_task_set(cfg.tasks, limit).source


def stored_rows_sha256(provenance: dict[str, Any] | None) -> str | None:
    """The rows hash a stored provenance record holds (None: a run stored without one)."""
    if not provenance:
        return None
    source = provenance.get("source") or {}
    value = source.get("rows_sha256")
    return str(value) if value else None


# -- prompts and chat templates ----------------------------------------------------------------


@lru_cache(maxsize=1)
def prompt_hashes() -> tuple[str, dict[str, str]]:
    """The hash over every prompt template file, and each file's own (``package/name``).

    Which templates a loop reads is not declared anywhere, so the whole set is hashed: a
    changed template of any loop changes it."""
    per_file: dict[str, str] = {}
    for package in PROMPT_PACKAGES:
        root = files(package)
        for entry in sorted(root.iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".toml") and entry.name != "ruff.toml":  # not a prompt
                key = f"{package.rsplit('.', 2)[-2]}/{entry.name}"
                per_file[key] = hashlib.sha256(entry.read_bytes()).hexdigest()
    whole = hashlib.sha256(json.dumps(per_file, sort_keys=True).encode()).hexdigest()
    return whole, per_file


def chat_template_sha256(model: str) -> str | None:
    """The sha256 of the chat template a local engine model applies (its GGUF file's
    ``tokenizer.chat_template``); None for hosted models, base models (llama.cpp applies a
    built-in template to them) and whenever the file does not say."""
    provider, _, name = model.partition("/")
    if provider != "local":
        return None
    from loopwright.loops.models.local_model import is_installed, spec_for

    try:
        spec = spec_for(name)
    except Exception:  # an unknown local model fails the run elsewhere, with its own message
        return None
    if not spec.chat or not is_installed(spec):
        return None
    from loopwright.loops.models.local_model import weights_path

    try:
        return _gguf_template_hash(weights_path(spec))
    except Exception:
        return None


@lru_cache(maxsize=16)
def _gguf_template_hash(path: Path) -> str | None:
    from loopwright.loops.models.local_model import gguf_metadata

    template = gguf_metadata(path).get("tokenizer.chat_template")
    if not isinstance(template, str):
        return None
    return hashlib.sha256(template.encode()).hexdigest()


# -- code, packages, machine -------------------------------------------------------------------


def _loopwright_version() -> str:
    try:
        return version("loopwright")
    except PackageNotFoundError:
        return "0+unknown"


def _git(root: Path, *args: str) -> str | None:
    git = shutil.which("git")
    if git is None:
        return None
    try:
        done = subprocess.run(
            [git, "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=_SUBPROCESS_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def code_version(root: Path | None = None) -> CodeVersion:
    """Loopwright's version, and the commit of the checkout it runs from (None when it is
    not a git checkout, or ``git`` is absent)."""
    root = root or Path(__file__).resolve().parents[2]
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top.strip()).resolve() != root.resolve():
        # not a checkout of loopwright itself (an installed copy, or inside another repo)
        return CodeVersion(version=_loopwright_version())
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return CodeVersion(
        version=_loopwright_version(),
        commit=commit.strip() if commit else None,
        dirty=None if status is None else bool(status.strip()),
    )


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    """Installed version per distribution (None: not installed); nothing is imported."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _memory_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _cpus() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def _gpu() -> str | None:
    """The GPU's name: from torch when it is already imported, else from nvidia-smi."""
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                return str(torch.cuda.get_device_name(0))
        except Exception:
            pass
    return _nvidia_smi_gpu()


@lru_cache(maxsize=1)
def _nvidia_smi_gpu() -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        done = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=_SUBPROCESS_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    names = [n.strip() for n in done.stdout.splitlines() if n.strip()]
    if done.returncode != 0 or not names:
        return None
    return names[0] if len(names) == 1 else f"{len(names)}x {names[0]}"


def machine() -> Machine:
    return Machine(
        platform=platform.platform(),
        python=platform.python_version(),
        cpus=_cpus(),
        memory_bytes=_memory_bytes(),
        gpu=_gpu(),
    )


# -- the record --------------------------------------------------------------------------------


def build_provenance(cfg: RunConfig, source: SourceInfo, tasks: int) -> Provenance:
    """The provenance of a run of ``cfg`` over ``tasks`` tasks from ``source``."""
    from loopwright.loops.execution.run_config import model_name

    whole, per_file = prompt_hashes()
    templates: dict[str, str | None] = {}
    for model in (cfg.model, *cfg.role_models.values()):
        name = model_name(model)
        if name not in templates:  # a Model object's template is its own business: unknown
            templates[name] = chat_template_sha256(model) if isinstance(model, str) else None
    return Provenance(
        source=source.model_dump(mode="json"),
        tasks=tasks,
        limit=cfg.limit,
        seeds={"run": cfg.seed, **source.seeds},
        prompts_sha256=whole,
        prompt_files=per_file,
        chat_template_sha256=templates.get(cfg.model_name),
        chat_templates=templates,
        loopwright=code_version(),
        packages=package_versions(),
        machine=machine(),
        recorded_at=datetime.now(UTC),
    )


def resume_record() -> ResumeRecord:
    """What a session that resumes a run runs on."""
    return ResumeRecord(
        at=datetime.now(UTC),
        loopwright=code_version(),
        packages=package_versions(),
        machine=machine(),
    )
