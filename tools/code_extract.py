"""Pulling the program out of a model response: fenced blocks, a bare ``def``, or a body-only
completion of the prompt (:func:`extract_code`, re-exported by :mod:`loopwright.tools.code_tests`).
"""

from __future__ import annotations

import ast
import re

_PY_LANGS = {"", "python", "py", "python3", "py3"}
_FENCE = re.compile(r"^\s*```+\s*([\w.+-]*)")


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) for every fenced block; an unclosed final fence runs to the end."""
    blocks: list[tuple[str, str]] = []
    lang: str | None = None
    body: list[str] = []
    for line in text.splitlines():
        m = _FENCE.match(line)
        if lang is None:
            if m:
                lang, body = m.group(1).lower(), []
        elif m and line.strip().strip("`") == "":
            blocks.append((lang, "\n".join(body) + "\n"))
            lang = None
        else:
            body.append(line)
    if lang is not None and body:
        blocks.append((lang, "\n".join(body) + "\n"))
    return blocks


def _defines(code: str, entry_point: str) -> bool:
    return (
        re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.M) is not None
    )


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def _trim_to_parsable(code: str) -> str:
    """Drop trailing prose: the longest prefix, cut at a top-level line, that parses."""
    if _parses(code):
        return code
    lines = code.splitlines(keepends=True)
    for cut in range(len(lines) - 1, 0, -1):
        if lines[cut].strip() and not lines[cut][0].isspace():
            candidate = "".join(lines[:cut])
            if _parses(candidate):
                return candidate
    return code


def _looks_like_body(text: str) -> bool:
    """Indented body lines continuing a prompt: first code line indented, no top-level def."""
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    return bool(first) and first[0] in " \t" and re.search(r"^def\s", text, re.M) is None


def _join_prompt(prompt: str, body: str) -> str:
    sep = "" if prompt.endswith("\n") or body.startswith("\n") else "\n"
    return prompt + sep + body


def extract_code(text: str, prompt: str | None = None, entry_point: str | None = None) -> str:
    """The program in a model response.

    Order: the last fenced python (or bare) block defining ``entry_point`` (when given), else
    the last python/bare fenced block, else the last fenced block of any language; without
    fences, from the line ``def entry_point(`` on (keeping imports above it, dropping
    trailing prose); a body-only completion (indented lines, no ``def``) is appended to
    ``prompt``; otherwise the text as is.
    """
    blocks = _fenced_blocks(text)
    py_blocks = [body for lang, body in blocks if lang in _PY_LANGS]
    code: str | None = None
    if entry_point:
        defining = [b for b in py_blocks if _defines(b, entry_point)]
        if defining:
            code = defining[-1]
    if code is None and py_blocks:
        code = py_blocks[-1]
    if code is None and blocks:
        code = blocks[-1][1]
    if code is not None:
        if prompt is not None and _looks_like_body(code):
            return _join_prompt(prompt, code)
        return code
    if entry_point:
        m = re.search(rf"^[ \t]*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", text, re.M)
        if m:
            before = text[: m.start()].splitlines()
            imports = [ln for ln in before if re.match(r"^(?:import|from)\s+\w", ln)]
            tail = _trim_to_parsable(text[m.start() :])
            return "\n".join(imports) + ("\n" if imports else "") + tail
    if prompt is not None and _looks_like_body(text):
        return _join_prompt(prompt, text)
    return text
