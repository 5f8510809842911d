"""``loopwright view``: a local, read-only web page over the trace store."""

from loopwright.traces.view.server import CSP, SweepReport, Viewer, ViewError

__all__ = ["CSP", "SweepReport", "ViewError", "Viewer"]
