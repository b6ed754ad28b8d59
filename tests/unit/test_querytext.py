"""analysis/querytext.py: no comment or literal content survives safe_text; utility
statements are recognised (property tests with hypothesis, plus known evasions)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hiw_monitor.analysis.querytext import is_utility, safe_text, scan

CANARY = "Zq7Canary"
QUOTED_IDENTIFIER = re.compile(r'"(?:[^"]|"")*"')
BASE = "SELECT a, b.c, \"X\"\"y\" FROM t JOIN u ON u.id = t.id WHERE c = $1 AND d IN ($2, $3)"
BASE_WORDS = BASE.split(" ")

secret = st.tuples(st.text(max_size=20), st.text(max_size=20)).map(
    lambda parts: parts[0] + CANARY + parts[1])
plain = st.text(max_size=20).filter(lambda s: "/*" not in s and "*/" not in s)
comment_secret = secret.filter(lambda s: "/*" not in s and "*/" not in s)


def block_comment(depth: int = 2) -> st.SearchStrategy[str]:
    """A well-formed, possibly nested /* */ comment holding the canary somewhere."""
    inner = plain if depth == 0 else st.one_of(plain, block_comment(depth - 1))
    return st.lists(st.one_of(inner, comment_secret), min_size=1, max_size=4).map(
        lambda parts: "/* " + " ".join([*parts, CANARY]) + " */")


line_comment = st.tuples(secret.map(lambda s: s.replace("\n", " ").replace("\r", " ")),
                         st.sampled_from(["\n", "\r", "\r\n"])).map(
    lambda parts: "--" + parts[0] + parts[1])
comments = st.one_of(block_comment(), line_comment)


def _dollar(tag: str, body: str) -> str:
    return f"${tag}${body}${tag}$"


tags = st.one_of(st.just(""), st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True))
literals = st.one_of(
    secret.map(lambda s: "'" + s.replace("'", "''") + "'"),
    secret.map(lambda s: "E'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"),
    secret.map(lambda s: "e'" + s.replace("'", "''") + "'"),
    secret.map(lambda s: "N'" + s.replace("'", "''") + "'"),
    secret.map(lambda s: "U&'" + s.replace("'", "''") + "'"),
    secret.map(lambda s: "DATE '" + s.replace("'", "''") + "'"),
    st.just(f"B'{CANARY}'"), st.just(f"X'{CANARY}'"),
    st.tuples(tags, secret).filter(lambda p: f"${p[0]}$" not in p[1]).map(
        lambda p: _dollar(*p)),
)


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(0, len(BASE_WORDS)), comments), max_size=4))
def test_comments_never_survive_and_the_query_does(insertions):
    words = list(BASE_WORDS)
    for position, comment in sorted(insertions, key=lambda p: -p[0]):
        words.insert(position, comment)
    text = " ".join(words)
    assert safe_text(text, 10_000) == BASE


@settings(max_examples=200)
@given(st.integers(0, len(BASE) - 1), comments)
def test_comments_glued_anywhere_never_survive(position, comment):
    # glued between two characters (possibly inside a token or a quoted identifier)
    text = BASE[:position] + comment + BASE[position:]
    result = safe_text(text, 10_000)
    inside_identifier = BASE[:position].count('"') % 2 == 1
    if not inside_identifier:
        assert result is None or CANARY not in result


@settings(max_examples=300)
@given(st.integers(0, len(BASE_WORDS)), literals, st.sampled_from(["", " ", "\n"]))
def test_a_literal_anywhere_refuses_the_text(position, literal, gap):
    words = list(BASE_WORDS)
    words.insert(position, literal)
    text = gap.join(words) if gap else "".join(words)
    if not text.lstrip().upper().startswith("SELECT"):
        text = "SELECT " + text
    assert safe_text(text, 10_000) is None


@settings(max_examples=300)
@given(st.text(max_size=80))
def test_any_text_comes_out_clean_or_not_at_all(text):
    result = safe_text(text, 10_000)
    if result is None:
        return
    kinds = {kind for kind, _ in scan(result)}
    assert not kinds & {"comment", "literal", "unterminated"}
    assert is_utility(result) is False
    assert result == result.strip()
    assert "  " not in "".join(v for k, v in scan(result) if k != "quoted")
    assert safe_text(result, 10_000) == result  # idempotent


@settings(max_examples=200)
@given(st.text(alphabet="SELECT '\"$-/*\n\\E&Uab1 ", max_size=40))
def test_sql_punctuation_soup_never_leaks_a_quote(text):
    result = safe_text("SELECT " + text, 10_000)
    if result is not None:
        # an independent oracle: quoted identifiers out (as a separator), then no quote
        # or comment marker may be left
        outside = QUOTED_IDENTIFIER.sub(" ", result)
        assert '"' not in outside
        assert "'" not in outside
        assert "--" not in outside
        assert "/*" not in outside
        assert not re.search(r"(?<![A-Za-z0-9_$])\$(?!\d)", outside)  # only $n, a$b


@pytest.mark.parametrize("text", [
    f"SELECT a /* /* */ {CANARY} */ FROM t",
    f"SELECT a /*/ {CANARY} */ FROM t",
    f"SELECT a /* {CANARY} /* */ FROM t",  # unterminated: the rest is comment
    f"SELECT a -- {CANARY}\rFROM t",
    f"SELECT a --{CANARY}",
    f"SELECT a+/*{CANARY}*/1 FROM t",
    f"SELECT a-/*{CANARY}*/-1 FROM t",
    f"SELECT a FROM t WHERE b = $x${CANARY}$x$",
    f"SELECT a FROM t WHERE b = $${CANARY}$$",
    f"SELECT a FROM t WHERE b = $1${CANARY}$1$",
    f"SELECT a FROM t WHERE b = U&'{CANARY}' UESCAPE '!'",
    f"SELECT a FROM t WHERE b = E'\\'{CANARY}'",
    f"SELECT a FROM t WHERE b = '' '{CANARY}'",
    f"SELECT a FROM t WHERE b = 'x'\n'{CANARY}'",
    f"SELECT a FROM t WHERE b = B'{CANARY}'",
    f"SELECT a FROM t WHERE b = X'{CANARY}'",
    f'SELECT a FROM t WHERE "b = {CANARY}',  # unterminated quoted identifier
    f"/* {CANARY} */ SET x = 1",
    f"SHOW {CANARY}",
])
def test_known_evasions(text):
    result = safe_text(text, 10_000)
    assert result is None or CANARY not in result


@pytest.mark.parametrize(("text", "expected"), [
    ('SELECT "/*" , "--" FROM t', 'SELECT "/*" , "--" FROM t'),
    ('SELECT "a""b" FROM "t  x"', 'SELECT "a""b" FROM "t  x"'),
    ("SELECT a$b$ FROM t", "SELECT a$b$ FROM t"),  # an identifier, not a dollar quote
    ("select a/**/from t", "select a from t"),
    ("  (  SELECT 1  )  UNION ( SELECT 2 )  ", "( SELECT 1 ) UNION ( SELECT 2 )"),
    ("SELECT a FROM t WHERE x IN ($1 /*, ... */)", "SELECT a FROM t WHERE x IN ($1 )"),
    ("WITH x AS (SELECT 1) SELECT * FROM x", "WITH x AS (SELECT 1) SELECT * FROM x"),
    ("TABLE t", "TABLE t"),
    ("VALUES ($1, $2)", "VALUES ($1, $2)"),
    ("MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE",
     "MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE"),
])
def test_kept_text(text, expected):
    assert safe_text(text, 10_000) == expected


def test_truncation_and_empty():
    assert safe_text("SELECT a, b, c FROM t", 12) == "SELECT a, b…"
    assert len(safe_text("SELECT " + "x, " * 500 + "y", 64)) == 64
    assert safe_text("SELECT 1", 8) == "SELECT 1"
    assert safe_text(None, 10) is None
    assert safe_text("", 10) is None
    assert safe_text("   /* nothing */ ", 10) is None


UTILITY_STATEMENTS = [
    "BEGIN", "START TRANSACTION", "COMMIT", "END", "ROLLBACK", "ABORT", "SAVEPOINT s",
    "RELEASE SAVEPOINT s", "PREPARE TRANSACTION 'x'", "SET x = 1", "RESET x", "SHOW x",
    "DISCARD ALL", "DEALLOCATE p", "PREPARE p AS SELECT 1", "EXECUTE p", "LISTEN c",
    "NOTIFY c", "UNLISTEN *", "LOCK t", "VACUUM t", "ANALYZE t", "analyse t", "CHECKPOINT",
    "CREATE TABLE t (a int)", "ALTER TABLE t ADD b int", "DROP TABLE t", "COPY t FROM stdin",
    "EXPLAIN SELECT 1", "CALL p()", "DO $$ BEGIN END $$", "GRANT SELECT ON t TO r",
    "REVOKE SELECT ON t FROM r", "TRUNCATE t", "REFRESH MATERIALIZED VIEW v", "CLUSTER t",
    "REINDEX TABLE t", "COMMENT ON TABLE t IS 'x'", "SECURITY LABEL ON TABLE t IS 'x'",
    "FETCH 1 FROM c", "MOVE 1 IN c", "CLOSE c", "DECLARE c CURSOR FOR SELECT 1",
    "CREATE TABLE t AS SELECT 1", "IMPORT FOREIGN SCHEMA s FROM SERVER x INTO y",
    "LOAD 'x'", "REASSIGN OWNED BY a TO b",
]


@pytest.mark.parametrize("text", UTILITY_STATEMENTS)
def test_utility_statements(text):
    assert is_utility(text) is True
    assert is_utility(f"/* lead */ -- c\n  {text.lower()}") is True
    assert safe_text(text, 1000) is None


@pytest.mark.parametrize("text", [
    "SELECT 1", "insert into t values ($1)", "UPDATE t SET a = $1", "DELETE FROM t",
    "MERGE INTO t USING u ON true WHEN MATCHED THEN DELETE", "WITH a AS (SELECT 1) TABLE a",
    "VALUES ($1)", "TABLE t", "((SELECT 1))", "/* c */ ( -- x\n select 1)",
])
def test_planned_statements(text):
    assert is_utility(text) is False


@pytest.mark.parametrize("text", [None, "", "   ", "/* only */", "-- only", "frobnicate",
                                  "'literal'", '"quoted"', "$1", "(", ";", "123"])
def test_unknown_is_none(text):
    assert is_utility(text) is None
    assert safe_text(text, 100) is None
