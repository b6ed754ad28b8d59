"""Query text that may leave the database: pg_stat_statements' normalized text, scanned
the way PostgreSQL's own lexer reads it, with every comment removed and every text still
holding a literal refused.

pg_stat_statements replaces the constants of a planned statement by ``$1``, ``$2``, ...
but keeps comments, and keeps utility statements (``SET app.student = 'Ann'``) verbatim.
So the opt-in query text (collectors.statements.query_text) goes through
:func:`safe_text`: a left-to-right scan (no regular expressions that a crafted comment or
quote could fool) that knows

- ``-- ...`` comments (up to a newline or carriage return),
- ``/* ... */`` comments, nested like PostgreSQL nests them (``/* /* */ still */``), and
  an unterminated one running to the end of the text,
- quoted identifiers ``"a""b"`` (kept verbatim: a comment marker inside one is not a
  comment),
- string literals in every form: ``'...'``, ``E'...'``, ``N'...'``, ``B'...'``,
  ``X'...'``, ``U&'...'``, typed (``DATE '...'``), dollar-quoted ``$$...$$`` and
  ``$tag$...$tag$``,
- parameters ``$1`` and identifiers that contain ``$`` (``a$b``), which are not quotes.

Any text that still holds a literal (or anything that could open a dollar quote, or an
unterminated quoted identifier) is refused outright rather than "cleaned": nothing of a
value can survive. Numeric constants are not looked for: pg_stat_statements has already
replaced them in the statements this is used for (what is left are digits of identifiers
and type modifiers such as ``varchar(20)``), and utility statements, whose text is not
normalized, are refused as a whole.

Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

# PostgreSQL's whitespace (scan.l: space [ \t\n\r\f\v]); anything else non-ASCII is part
# of an identifier, as the server reads it.
_SPACE = " \t\n\r\f\v"
_NEWLINE = "\n\r"

Kind = Literal["space", "comment", "word", "quoted", "param", "number", "other",
               "literal", "unterminated"]
Token = tuple[Kind, str]

# First keyword of a statement pg_stat_statements plans and normalizes.
PLANNABLE = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "WITH", "VALUES",
                       "TABLE"})
# First keyword of a utility statement (text kept verbatim by pg_stat_statements).
UTILITY = frozenset({
    "ABORT", "ALTER", "ANALYSE", "ANALYZE", "BEGIN", "CALL", "CHECKPOINT", "CLOSE",
    "CLUSTER", "COMMENT", "COMMIT", "COPY", "CREATE", "DEALLOCATE", "DECLARE", "DISCARD",
    "DO", "DROP", "END", "EXECUTE", "EXPLAIN", "FETCH", "GRANT", "IMPORT", "LISTEN", "LOAD",
    "LOCK", "MOVE", "NOTIFY", "PREPARE", "REASSIGN", "REFRESH", "REINDEX", "RELEASE",
    "RESET", "REVOKE", "ROLLBACK", "SAVEPOINT", "SECURITY", "SET", "SHOW", "START",
    "TRUNCATE", "UNLISTEN", "VACUUM",
})


def _ident_start(ch: str) -> bool:
    return ch == "_" or not ch.isascii() or ch.isalpha()


def _ident_char(ch: str) -> bool:
    return _ident_start(ch) or ch == "$" or (ch.isascii() and ch.isdigit())


def _block_comment_end(text: str, start: int) -> int:
    """Index just past the ``/* ... */`` comment opening at ``start`` (nested comments
    count; an unterminated comment runs to the end)."""
    depth, i, n = 1, start + 2, len(text)
    while i < n:
        if text.startswith("/*", i):
            depth += 1
            i += 2
        elif text.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return n


def scan(text: str) -> Iterator[Token]:
    """The text as PostgreSQL's lexer splits it, as far as safety needs it.

    The scan stops at the first literal (or at a ``$`` that could open a dollar quote)
    and at an unterminated quoted identifier: that token carries the rest of the text.

    >>> list(scan('SELECT "a--b" /* x /* y */ z */ $1'))  # doctest: +NORMALIZE_WHITESPACE
    [('word', 'SELECT'), ('space', ' '), ('quoted', '"a--b"'), ('space', ' '),
     ('comment', '/* x /* y */ z */'), ('space', ' '), ('param', '$1')]
    >>> [kind for kind, _ in scan("SELECT a$b, E'x' FROM t")]
    ['word', 'space', 'word', 'other', 'space', 'word', 'literal']
    """
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        kind: Kind
        if ch in _SPACE:
            kind, j = "space", i + 1
            while j < n and text[j] in _SPACE:
                j += 1
        elif text.startswith("--", i):
            kind, j = "comment", i + 2
            while j < n and text[j] not in _NEWLINE:
                j += 1
        elif text.startswith("/*", i):
            kind, j = "comment", _block_comment_end(text, i)
        elif ch == '"':
            kind, j = "quoted", _quoted_end(text, i)
            if j < 0:
                yield "unterminated", text[i:]
                return
        elif ch == "'":  # every string form: '', E'', N'', B'', X'', U&'', DATE ''
            yield "literal", text[i:]
            return
        elif ch == "$":
            kind, j = "param", i + 1
            while j < n and text[j].isascii() and text[j].isdigit():
                j += 1
            if j == i + 1:  # $$, $tag$ (or junk): could open a dollar quote
                yield "literal", text[i:]
                return
        elif _ident_start(ch):
            kind, j = "word", i + 1
            while j < n and _ident_char(text[j]):
                j += 1
        elif ch.isascii() and ch.isdigit():
            kind, j = "number", i + 1
            while j < n and text[j].isascii() and (text[j].isalnum() or text[j] in "._"):
                j += 1
        else:
            kind, j = "other", i + 1
        yield kind, text[i:j]
        i = j


def _quoted_end(text: str, start: int) -> int:
    """Index just past the quoted identifier opening at ``start`` (``""`` is a quote
    inside it), or -1 when it is not closed."""
    j = start + 1
    while True:
        j = text.find('"', j)
        if j < 0:
            return -1
        if not text.startswith('""', j):
            return j + 1
        j += 2


def _first_keyword(tokens: Sequence[Token]) -> str | None:
    """The statement's first keyword, upper-cased, after leading comments, whitespace and
    opening parentheses; None when the statement starts with anything else."""
    for kind, value in tokens:
        if kind in ("space", "comment") or (kind == "other" and value == "("):
            continue
        return value.upper() if kind == "word" else None
    return None


def is_utility(text: str | None) -> bool | None:
    """Whether a pg_stat_statements entry is a utility statement (its text is kept verbatim,
    literals and all), judged by its first keyword after comments and parentheses.

    True for utility statements, False for the planned ones (SELECT, INSERT, UPDATE,
    DELETE, MERGE, WITH, VALUES, TABLE), None for empty or unrecognised text.

    >>> is_utility("SET app.student = 'Ann'"), is_utility("/* x */ ((select 1))")
    (True, False)
    >>> is_utility("  -- only a comment"), is_utility("frobnicate"), is_utility(None)
    (None, None, None)
    >>> is_utility("REFRESH MATERIALIZED VIEW v"), is_utility("with a as (select 1) table a")
    (True, False)
    """
    if not text:
        return None
    keyword = _first_keyword(list(scan(text)))
    if keyword in UTILITY:
        return True
    if keyword in PLANNABLE:
        return False
    return None


def _render(tokens: Sequence[Token]) -> str:
    """Tokens joined back, every comment and run of whitespace as one space."""
    out: list[str] = []
    gap = False
    for kind, value in tokens:
        if kind in ("space", "comment"):
            gap = True
            continue
        if gap and out:
            out.append(" ")
        gap = False
        out.append(value)
    return "".join(out)


def safe_text(text: str | None, length: int) -> str | None:
    """Normalized query text fit to leave the database, or None.

    Comments are removed (they can carry values); utility statements, unrecognised
    statements and any text still holding a literal are refused; whitespace outside
    quoted identifiers is collapsed; text longer than ``length`` characters is cut to
    ``length`` with a final ``…``.

    >>> safe_text("SELECT * FROM t /* student 42 */ WHERE id = $1", 100)
    'SELECT * FROM t WHERE id = $1'
    >>> safe_text("SELECT a /* /* nested */ Ann */ FROM t", 100)
    'SELECT a FROM t'
    >>> safe_text("SET app.student = 'Ann'", 100) is None
    True
    >>> safe_text("SELECT 'literal'", 100) is None, safe_text("SELECT $q$Ann$q$", 100) is None
    (True, True)
    >>> safe_text('SELECT "a--b" FROM "x""y" -- pupil 7', 100)
    'SELECT "a--b" FROM "x""y"'
    >>> safe_text("SELECT a, b, c FROM t", 12)
    'SELECT a, b…'
    """
    if not text:
        return None
    tokens = list(scan(text))
    if any(kind in ("literal", "unterminated") for kind, _ in tokens):
        return None
    if _first_keyword(tokens) not in PLANNABLE:
        return None
    rendered = _render(tokens)
    if len(rendered) <= length:
        return rendered
    return rendered[: max(length - 1, 0)] + "…"
