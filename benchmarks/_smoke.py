"""The smoke setting every benchmark script takes: ``--smoke``.

``--smoke`` runs a script at the smallest sizes that still go through all of its code (a few
seconds where it can), so CI can run every script and a refactor that breaks one fails
there. Its figures mean nothing. Flags given on the command line still win over the smoke
sizes. ``run_all.py --smoke`` (or ``BENCH_SMOKE=1 make bench``) passes it to every script.
"""

from __future__ import annotations

import argparse
from typing import Any

HELP = "smallest sizes, to check that the script runs (CI); the figures mean nothing"


def parse_args(
    ap: argparse.ArgumentParser, argv: list[str] | None, **smoke: Any
) -> argparse.Namespace:
    """``ap.parse_args(argv)`` with a ``--smoke`` flag that makes ``smoke`` the defaults."""
    ap.add_argument("--smoke", action="store_true", help=HELP)
    unknown = set(smoke) - {action.dest for action in ap._actions}
    if unknown:  # a renamed flag: fail here, not with sizes silently left at full scale
        raise ValueError(f"smoke sizes for flags the script lacks: {', '.join(sorted(unknown))}")
    known, _ = ap.parse_known_args(argv)
    if known.smoke:
        ap.set_defaults(**smoke)
    return ap.parse_args(argv)
