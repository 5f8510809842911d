"""Isolated execution backends (bwrap, docker, process). Filled in by the sandbox work."""
