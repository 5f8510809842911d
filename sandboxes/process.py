"""``process`` backend: a plain subprocess with rlimits, a process-group kill and an output cap.

NO isolation: the program sees the network, the host filesystem (as the calling user) and
can escape the process group with ``setsid``. Explicit opt-in only, for trusted code or
machines without bubblewrap.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

from loopwright.sandboxes.base import (
    ExecResult,
    Sandbox,
    SandboxLimits,
    collect,
    own_process_count,
    rlimit_setter,
    write_files,
)

_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "TZ")


class ProcessSandbox(Sandbox):
    """Runs programs as ordinary child processes of this one. Not a security boundary."""

    name = "process"

    def __init__(self) -> None:
        warnings.warn(
            "the 'process' sandbox does NOT isolate code: it can read your files, use the "
            "network and outlive the run. Use it only for trusted code; prefer 'bwrap'.",
            stacklevel=2,
        )

    def python_argv(self) -> list[str]:
        return [sys.executable, "-I", "-B"]

    def run(
        self,
        argv: list[str],
        *,
        files: Mapping[str, str | bytes] | None = None,
        stdin: str | bytes | None = None,
        limits: SandboxLimits | None = None,
    ) -> ExecResult:
        limits = limits or SandboxLimits()
        workdir = Path(tempfile.mkdtemp(prefix="loopwright-proc-"))
        try:
            write_files(workdir, files)
            # RLIMIT_NPROC counts every process of our uid, so leave room for the ones we have.
            nproc = own_process_count() + limits.max_processes
            env = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ}
            env["HOME"] = str(workdir)
            started = time.monotonic()
            proc = subprocess.Popen(
                argv,
                cwd=workdir,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=rlimit_setter(limits, nproc),
            )
            return collect(proc, stdin, limits, started)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
