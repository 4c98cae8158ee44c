"""moonlet's parameter style (``?`` and ``:name``, as SQLite takes them) rewritten as PostgreSQL's ``$n``.

One scan skips what is not SQL text: 'strings' (and E'strings' with backslash escapes), "identifiers",
$tag$dollar-quoted$tag$ bodies, -- and /* */ comments; ``::`` casts are left alone. SQL that already uses
``$n`` has no ``?`` or ``:name`` to rewrite and passes through unchanged.
"""

from __future__ import annotations

import functools
import re
from typing import Any

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@functools.lru_cache(maxsize=1024)
def numbered(sql: str) -> tuple[str, tuple[str, ...], int]:
    """``(sql with $n, the names in $n order, the count of ?)``; a statement mixes no styles."""
    out: list[str] = []
    names: list[str] = []
    positional = 0
    i, n, start = 0, len(sql), 0
    while i < n:
        c = sql[i]
        if c == "'":
            escapes = (
                i > 0 and sql[i - 1] in "eE" and (i == 1 or not (sql[i - 2].isalnum() or sql[i - 2] == "_"))
            )
            i = _end_of_quoted(sql, i, "'", escapes)
        elif c == '"':
            i = _end_of_quoted(sql, i, '"', False)
        elif c == "-" and sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif c == "/" and sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c == "$" and (m := _DOLLAR_TAG.match(sql, i)) and not (i > 0 and (sql[i - 1].isalnum())):
            j = sql.find(m.group(0), m.end())
            i = n if j < 0 else j + len(m.group(0))
        elif c == "?":
            positional += 1
            out.append(sql[start:i])
            out.append(f"${positional}")
            i += 1
            start = i
        elif c == ":" and (m := _NAME.match(sql, i + 1)) and not (i > 0 and sql[i - 1] == ":"):
            name = m.group(0)
            if name not in names:
                names.append(name)
            out.append(sql[start:i])
            out.append(f"${names.index(name) + 1}")
            i = start = m.end()
        elif c == ":" and sql.startswith("::", i):
            i += 2
        else:
            i += 1
    if positional and names:
        raise ValueError("a statement cannot mix ? and :name parameters")
    out.append(sql[start:])
    return "".join(out), tuple(names), positional


def _end_of_quoted(sql: str, i: int, quote: str, backslash_escapes: bool) -> int:
    """The index after the quoted text starting at ``sql[i]`` (a doubled quote stays inside)."""
    j = i + 1
    n = len(sql)
    while j < n:
        c = sql[j]
        if backslash_escapes and c == "\\":
            j += 2
            continue
        if c == quote:
            if j + 1 < n and sql[j + 1] == quote:
                j += 2
                continue
            return j + 1
        j += 1
    return n


def bind(sql: str, params: tuple[Any, ...] | dict[str, Any]) -> tuple[str, list[Any]]:
    """The PostgreSQL text of ``sql`` and its arguments in ``$n`` order; ValueError if they do not fit."""
    text, names, positional = numbered(sql)
    if names:
        if not isinstance(params, dict):
            raise ValueError(f"the statement takes named parameters (:{names[0]}): pass one table of them")
        missing = [name for name in names if name not in params]
        if missing:
            raise ValueError(f"no value for :{missing[0]}")
        return text, [params[name] for name in names]
    values = list(params.values()) if isinstance(params, dict) else list(params)
    if isinstance(params, dict) and params:
        raise ValueError("named parameters given, but the statement has no :name in it")
    if positional and len(values) != positional:
        raise ValueError(f"the statement has {positional} ? parameters, {len(values)} values were given")
    return text, values
