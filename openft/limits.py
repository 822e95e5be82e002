"""Bounds on what one request may ask of the service that are checked in more than one place (the request guard,
the graders, the trainer): pure functions of the standard library, so every process may use them."""

from __future__ import annotations

import re

JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
BRACKETS = bytes.maketrans(b"[{]}", b"(())")
NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[{]}")
# A \u0000 escape that is not itself escaped (an even run of backslashes before it).
NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
MAX_SAMPLE_JSON_DEPTH = 64  # a model sample parsed as JSON for {{sample.output_json}}


def too_deep(body: bytes, limit: int) -> bool:
    """Whether arrays and objects nest more than ``limit`` deep in a JSON text (strings ignored). Each pass removes
    the innermost ``[]``/``{}`` pairs at C speed, so the check costs at most ``limit + 1`` passes over the body.

    >>> too_deep(b'{"a": [1, {"b": "[[[["}]}', 3), too_deep(b'{"a": [1, {"b": "[[[["}]}', 2), too_deep(b"plain", 1)
    (False, True, False)
    """
    brackets = JSON_STRING.sub(b"", body).translate(BRACKETS, NOT_BRACKETS)
    for _ in range(limit):
        shorter = brackets.replace(b"()", b"")
        if shorter == brackets:
            return False
        brackets = shorter
    return b"()" in brackets


def has_nul(text: bytes) -> bool:
    r"""Whether a NUL character is in ``text``, raw or as JSON's ``\u0000`` escape. PostgreSQL cannot store one in a
    text column, so the service refuses it in every path, query and JSON body rather than failing when it is stored.

    >>> has_nul(rb'{"a": "x\u0000"}'), has_nul(rb'{"a": "x\\u0000"}'), has_nul(b"a\x00"), has_nul(b"plain")
    (True, False, True, False)
    """
    return b"\x00" in text or NUL_ESCAPE.search(text) is not None
