"""discovery.py: file_sd files to targets; bad, half-written and duplicate entries; the
agent's view of a changing fleet (no database: nothing here connects)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from hiw_monitor.config import FileSD, Overrides, TargetConfig, load
from hiw_monitor.discovery import REASONS, Discovery, Problem, parse
from hiw_monitor.scheduler import Agent
from hiw_monitor.shard import parse as parse_shard

GROUPS = """
- targets: ["db1.internal:5432", "db2.internal:5433"]
  labels:
    dbname: heroes_in_waiting
    user: hiw_monitor
    password_file: /run/secrets/hiw
    sslmode: verify-full
    env: prod
    team: payments
    __meta_source: cmdb
- targets: ["[::1]:6432"]
  labels: {name: bouncer, type: pgbouncer, user: stats, password_env: PGB_PW}
- targets: ["postgresql://mon@db3.internal:5434/hiw?sslmode=require", "db4"]
"""


def targets_of(text: str, file: str = "t.yaml") -> dict[str, TargetConfig]:
    return {t.name: t for t in parse(textwrap.dedent(text), file, env={})}


def problem_of(text: str, file: str = "t.yaml") -> Problem:
    with pytest.raises(Problem) as info:
        parse(textwrap.dedent(text), file, env={})
    return info.value


def test_groups_map_to_targets():
    found = targets_of(GROUPS)
    assert list(found) == ["db1.internal:5432/heroes_in_waiting",
                           "db2.internal:5433/heroes_in_waiting", "bouncer",
                           "db3.internal:5434/hiw", "db4:5432/postgres"]
    db1 = found["db1.internal:5432/heroes_in_waiting"]
    assert db1.conninfo == ("host=db1.internal port=5432 dbname=heroes_in_waiting "
                            "user=hiw_monitor sslmode=verify-full")
    assert db1.password_file == "/run/secrets/hiw"
    assert db1.password is None
    # the other labels are hiw_target_info's; __ labels are Prometheus' own
    assert db1.labels == (("env", "prod"), ("team", "payments"))
    bouncer = found["bouncer"]
    assert (bouncer.kind, bouncer.password_env) == ("pgbouncer", "PGB_PW")
    assert bouncer.conninfo == "host=::1 port=6432 user=stats dbname=pgbouncer"
    assert found["db3.internal:5434/hiw"].conninfo == (
        "user=mon dbname=hiw host=db3.internal port=5434 sslmode=require")
    assert found["db4:5432/postgres"].conninfo == "host=db4"
    assert found["db4:5432/postgres"].labels == ()


def test_json_files_are_read_as_json():
    found = targets_of('[{"targets": ["db1:5432"], "labels": {"dbname": "hiw", "tier": 1}}]',
                       "t.json")
    assert found["db1:5432/hiw"].labels == (("tier", "1"),)
    assert problem_of("- targets: [db1]\n", "t.json").reason == "syntax"  # YAML is not JSON


def test_an_empty_list_is_no_targets_but_an_empty_file_is_refused():
    assert targets_of("[]") == {}
    assert targets_of("- targets: []\n") == {}
    for empty in ("", "\n  \n"):
        problem = problem_of(empty)
        assert problem.reason == "empty"
        assert "write []" in problem.text


@pytest.mark.parametrize(("text", "reason", "words"), [
    ("- targets: [db1:5432]\n  labels: {password: hunter2}\n", "target",
     "[0].labels.password: refused"),
    ("- targets: ['postgresql://mon:hunter2@db1/hiw']\n", "target", "holds a password"),
    ("- targets: [db1]\n  labels: {host: db2}\n", "target", "[0].labels.host"),
    ("- targets: [db1]\n  labels: {port: '5432'}\n", "target", "[0].labels.port"),
    ("- targets: [db1]\n  labels: {dsn: 'host=x'}\n", "target", "[0].labels.dsn"),
    ("- targets: [db1:5432, db2:5432]\n  labels: {name: one}\n", "target",
     "names one target, but the group has 2"),
    ("- targets: [db1]\n  labels: {target: x}\n", "target", "label 'target' is reserved"),
    ("- targets: [db1]\n  labels: {bad-name: x}\n", "target", "is not a label name"),
    ("- targets: [db1]\n  labels: {team: [a, b]}\n", "target", "expected a string"),
    ("- targets: [db1]\n  labels: {type: mysql}\n", "target", "is not a target type"),
    ("- targets: ['db1:99999']\n", "target", "not a port number"),
    ("- targets: [db1]\n  labels: [dbname]\n", "format", "expected a mapping of labels"),
    ("- targets: db1\n", "format", "[0].targets: expected a list"),
    ("- targets: [db1, '']\n", "format", "[0].targets: expected a list"),
    ("- targets: [db1]\n  lables: {}\n", "format", "unknown key 'lables'"),
    ("- db1:5432\n", "format", "[0]: expected a mapping"),
    ("targets: [db1]\n", "format", "expected a list of groups"),
])
def test_bad_entries_are_refused_with_where_and_why(text, reason, words):
    problem = problem_of(text)
    assert problem.reason == reason
    assert words in problem.text
    assert "hunter2" not in problem.text


def test_a_file_cut_short_is_refused():
    full = textwrap.dedent(GROUPS)
    assert problem_of(full[: full.index("6432") + 2]).reason == "syntax"  # in a [...]
    assert problem_of(full[: full.index("dbname") + 3]).reason == "format"  # labels: dbn
    json_text = '[{"targets": ["db1:5432"], "labels": {"dbname": "hiw"}}]'
    assert problem_of(json_text[:30], "t.json").reason == "syntax"


scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True), st.text(max_size=20),
                    st.sampled_from(["db1:5432", "[::1]:1", "postgresql://u@h/d", "h:0",
                                     "name", "password", "dbname", "type", "pgbouncer"]))
documents = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(["targets", "labels", "name", "password",
                                               "dbname", "__x", "team"]),
                              st.text(max_size=8)), children, max_size=4)), max_leaves=12)


def outcome(text: str, file: str) -> list[TargetConfig] | Problem:
    try:
        return parse(text, file, env={})
    except Problem as problem:
        return problem


@settings(max_examples=300)
@given(documents)
def test_any_document_gives_targets_or_a_problem(document):
    """Bad input of any shape: a list of targets or a Problem with a reason, never
    another exception."""
    for text, file in ((yaml.safe_dump(document), "t.yaml"), (json.dumps(document), "t.json")):
        found = outcome(text, file)
        if isinstance(found, Problem):
            assert found.reason in REASONS
            assert found.text
        else:
            assert all(isinstance(t, TargetConfig) and t.password is None for t in found)


@settings(max_examples=300)
@given(st.text(max_size=300))
def test_any_text_gives_targets_or_a_problem(text):
    for file in ("t.yaml", "t.json"):
        found = outcome(text, file)
        assert isinstance(found, list) or found.reason in REASONS


# --- Discovery: files, changes, duplicates --------------------------------------------


def write(path: Path, text: str) -> None:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    # a rewrite in the same clock tick with the same size would look unchanged: not in
    # real life (a person or a config tool writes seconds apart), always in a fast test
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def group(*addresses: str, **labels: str) -> str:
    items = ", ".join(f'"{a}"' for a in addresses)
    pairs = ", ".join(f"{k}: {v}" for k, v in {"dbname": "hiw", **labels}.items())
    return f"- targets: [{items}]\n  labels: {{{pairs}}}\n"


def names(targets) -> list[str]:
    return [t.name for t in targets]


def discovery(tmp_path: Path, **reserved: str) -> Discovery:
    return Discovery(FileSD((str(tmp_path / "*.yaml"), str(tmp_path / "*.json"))),
                     reserved=reserved, env={})


def test_files_in_sorted_order_and_a_changed_file_is_read_again(tmp_path):
    write(tmp_path / "b.yaml", group("db2:5432"))
    write(tmp_path / "a.yaml", group("db1:5432"))
    (tmp_path / "ignored.txt").write_text(group("db9:5432"))
    found = discovery(tmp_path)
    assert names(found.scan()) == ["db1:5432/hiw", "db2:5432/hiw"]
    write(tmp_path / "a.yaml", group("db1:5432") + group("db3:5432"))
    assert names(found.scan()) == ["db1:5432/hiw", "db3:5432/hiw", "db2:5432/hiw"]
    (tmp_path / "b.yaml").unlink()  # a deleted file takes its targets with it
    with capture_logs() as logs:
        assert names(found.scan()) == ["db1:5432/hiw", "db3:5432/hiw"]
    assert {"event": "discovery_file_gone", "file": str(tmp_path / "b.yaml"),
            "targets_removed": 1, "log_level": "info"} in logs


def test_an_unchanged_file_is_not_read_again_unless_forced(tmp_path):
    path = tmp_path / "a.yaml"
    write(path, group("db1:5432"))
    found = discovery(tmp_path)
    assert names(found.scan()) == ["db1:5432/hiw"]
    stat = path.stat()
    path.write_text(group("db7:5432"))  # same size, same times: looks unchanged
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    if path.stat().st_ctime_ns == stat.st_ctime_ns:  # pragma: no cover - same tick
        assert names(found.scan()) == ["db1:5432/hiw"]
    assert names(found.scan(force=True)) == ["db7:5432/hiw"]  # SIGHUP reads every file


@pytest.mark.parametrize("bad", [
    "- targets: [db1:5432]\n  labels: {dbname: hiw",  # half-written YAML
    "",  # truncated to nothing (the moment after open(..., 'w'))
    "- targets: [db1:5432]\n  labels: {password: hunter2}\n",  # one bad entry
    "just text\n",
])
def test_a_bad_version_keeps_the_last_good_list_and_says_why(tmp_path, bad):
    path = tmp_path / "a.yaml"
    write(path, group("db1:5432", "db2:5432"))
    write(tmp_path / "b.yaml", group("db3:5432"))
    found = discovery(tmp_path)
    assert names(found.scan()) == ["db1:5432/hiw", "db2:5432/hiw", "db3:5432/hiw"]
    write(path, bad)
    with capture_logs() as logs:
        assert names(found.scan()) == ["db1:5432/hiw", "db2:5432/hiw", "db3:5432/hiw"]
        assert names(found.scan()) == ["db1:5432/hiw", "db2:5432/hiw", "db3:5432/hiw"]
    errors = [e for e in logs if e["event"] == "discovery_error"]
    assert len(errors) == 1  # once per version, not at every look
    assert errors[0]["file"] == str(path)
    assert errors[0]["kept"] == 2
    assert errors[0]["problem"]
    assert "hunter2" not in str(errors)
    metrics = family_values(found)
    assert metrics[("hiw_discovery_file_valid", str(path))] == 0
    assert metrics[("hiw_discovery_file_valid", str(tmp_path / "b.yaml"))] == 1
    assert metrics[("hiw_discovery_targets", str(path))] == 2
    assert metrics[("hiw_discovery_errors_total", errors[0]["reason"])] == 1
    assert found.problems() == [(str(path), errors[0]["problem"])]
    write(path, group("db1:5432"))  # fixed
    assert names(found.scan()) == ["db1:5432/hiw", "db3:5432/hiw"]
    assert family_values(found)[("hiw_discovery_file_valid", str(path))] == 1
    assert found.problems() == []


def test_a_file_bad_from_the_start_contributes_nothing_and_the_others_stay(tmp_path):
    write(tmp_path / "a.yaml", "- targets: [db1:5432\n")
    write(tmp_path / "b.yaml", group("db2:5432"))
    found = discovery(tmp_path)
    assert names(found.scan()) == ["db2:5432/hiw"]
    assert family_values(found)[("hiw_discovery_errors_total", "syntax")] == 1


def test_an_unreadable_file_is_counted_once(tmp_path, monkeypatch):
    path = tmp_path / "a.yaml"
    write(path, group("db1:5432"))

    def refused(self):  # chmod 0 does not stop root, who runs the tests in CI
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", refused)
    found = discovery(tmp_path)
    with capture_logs() as logs:
        assert names(found.scan()) == []
        found.scan()
    assert [e["problem"] for e in logs if e["event"] == "discovery_error"] == [
        "cannot read it: Permission denied"]
    assert family_values(found)[("hiw_discovery_errors_total", "unreadable")] == 1
    monkeypatch.undo()
    write(path, group("db1:5432"))  # fixed (a chmod changes the ctime, seen too)
    assert names(found.scan()) == ["db1:5432/hiw"]


def test_duplicate_names_keep_the_first_and_name_both_files(tmp_path):
    write(tmp_path / "a.yaml", group("db1:5432"))
    write(tmp_path / "b.yaml", group("db1:5432", "db2:5432"))  # db1 again
    write(tmp_path / "c.yaml", "- targets: [other:5432]\n  labels: {name: static}\n")
    found = discovery(tmp_path, static="targets[0] of hiw.yaml")
    with capture_logs() as logs:
        assert names(found.scan()) == ["db1:5432/hiw", "db2:5432/hiw"]
        found.scan()  # the same duplicates: logged and counted once
    errors = [e for e in logs if e["event"] == "discovery_error"]
    assert [(e["file"], e["reason"]) for e in errors] == [
        (str(tmp_path / "b.yaml"), "duplicate"), (str(tmp_path / "c.yaml"), "duplicate")]
    assert str(tmp_path / "a.yaml") in errors[0]["problem"]  # both files named
    assert "'db1:5432/hiw'" in errors[0]["problem"]
    assert "targets[0] of hiw.yaml" in errors[1]["problem"]  # the config file wins
    assert family_values(found)[("hiw_discovery_errors_total", "duplicate")] == 2
    assert [p for _, p in found.problems()] == [e["problem"].split(";")[0] for e in errors]


def test_relative_globs_are_the_config_files(tmp_path, monkeypatch):
    config_dir = tmp_path / "etc"
    (config_dir / "targets").mkdir(parents=True)
    write(config_dir / "targets" / "fleet.yaml", group("db1:5432"))
    write(config_dir / "hiw.yaml", """
        file_sd:
          files: [targets/*.yaml]
          refresh_interval: 5s
        """)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load(Overrides(config="../etc/hiw.yaml"), environ={})
    assert config.targets == ()  # file_sd alone is a fleet: no "no database to watch"
    assert config.file_sd is not None
    assert config.file_sd.refresh_interval == 5.0
    assert config.file_sd.files == (str(config_dir / "targets" / "*.yaml"),)
    monkeypatch.chdir(tmp_path)  # the agent's cwd may change: the paths are absolute
    assert names(Discovery(config.file_sd, env={}).scan()) == ["db1:5432/hiw"]


def family_values(found: Discovery) -> dict[tuple[str, str], float]:
    return {(s.name, next(iter(s.labels.values()))): s.value
            for family in found.families() for s in family.samples}


# --- the agent's fleet, changed by reload() (not started: nothing connects) ------------


@pytest.fixture
def fleet(tmp_path):
    (tmp_path / "targets").mkdir()
    config_file = tmp_path / "hiw.yaml"
    config_file.write_text(textwrap.dedent("""
        targets:
          - {name: static, dsn: "postgresql://mon@127.0.0.1:1/hiw"}
        file_sd: {files: [targets/*.yaml]}
        collectors:
          statements: {interval: 1s}
        """))
    return tmp_path / "targets" / "fleet.yaml", load(Overrides(config=str(config_file)),
                                                     environ={})


def test_a_reload_applies_added_changed_and_removed_targets_and_keeps_the_rest(fleet):
    path, config = fleet
    write(path, group("127.0.0.1:1", name="a", team="x") + group("127.0.0.1:2", name="b")
          + group("127.0.0.1:3", name="c"))
    agent = Agent(config)
    try:
        assert names(agent.targets) == ["static", "a", "b", "c"]
        kept = {name: agent._by_name[name] for name in ("static", "a", "b")}
        state = agent.states[("a", "statements")]
        assert state is not None
        write(path, group("127.0.0.1:1", name="a", team="y")  # labels only: kept
              + group("127.0.0.1:9", name="b")  # other port: replaced
              + group("127.0.0.1:4", name="d"))  # c removed, d added
        changes = agent.reload(force=False)
        assert (changes.added, changes.changed, changes.removed) == (("d",), ("b",), ("c",))
        assert names(agent.targets) == ["static", "a", "b", "d"]
        assert agent._by_name["static"] is kept["static"]
        assert agent._by_name["a"] is kept["a"]
        assert agent.states[("a", "statements")] is state  # baselines survive
        assert agent._by_name["b"] is not kept["b"]
        assert ("c", "statements") not in agent.states
        _, targets, samples = agent.store.view()
        assert sorted(t.name for t in targets) == ["a", "b", "d", "static"]
        assert {s.target for s in samples} == {"a", "b", "d", "static"}
        info = {s.labels["target"]: s.labels for f in agent.store.agent_families()
                if f.name == "hiw_target_info" for s in f.samples}
        assert info["a"] == {"target": "a", "team": "y"}
        assert not agent.reload(force=False)  # nothing changed
    finally:
        agent.stop()


def test_a_half_written_file_changes_nothing(fleet):
    path, config = fleet
    write(path, group("127.0.0.1:1", name="a") + group("127.0.0.1:2", name="b"))
    agent = Agent(config)
    try:
        write(path, group("127.0.0.1:1", name="a")[:-10])
        assert not agent.reload(force=False)
        assert names(agent.targets) == ["static", "a", "b"]
        valid = [s.value for f in agent.store.agent_families()
                 if f.name == "hiw_discovery_file_valid" for s in f.samples]
        assert valid == [0.0]
        path.unlink()  # deleted: its targets go, the config file's stay
        assert agent.reload(force=False).removed == ("a", "b")
        assert names(agent.targets) == ["static"]
    finally:
        agent.stop()


def test_the_shard_filters_the_whole_fleet(fleet, tmp_path):
    path, _ = fleet
    write(path, "".join(group(f"127.0.0.1:{port}", name=f"t{port}") for port in range(1, 31)))
    owned = []
    for index in range(3):
        config = load(Overrides(config=str(tmp_path / "hiw.yaml"), shard=f"{index}/3"),
                      environ={})
        agent = Agent(config)
        owned.append(names(agent.targets))
        shard = [s.value for f in agent.store.agent_families() if f.name == "hiw_shard_targets"
                 for s in f.samples if s.labels == {"shard": f"{index}/3"}]
        assert shard == [len(agent.targets)]
        agent.stop()
    everything = ["static", *(f"t{port}" for port in range(1, 31))]
    assert sorted(itertools.chain(*owned)) == sorted(everything)


def test_validate_config_checks_the_discovery_files(tmp_path):
    (tmp_path / "targets").mkdir()
    write(tmp_path / "targets" / "a.yaml", group("db1:5432") + group("db2:5432"))
    write(tmp_path / "hiw.yaml", "file_sd: {files: [targets/*.yaml]}\n")

    def validate():
        return subprocess.run([sys.executable, "-m", "hiw_monitor", "validate-config",
                               str(tmp_path / "hiw.yaml")], capture_output=True, text=True,
                              timeout=120, check=False)

    good = validate()
    assert good.returncode == 0, good.stderr
    assert "file_sd: 1 file(s) match" in good.stdout
    assert "2 target(s) (db1:5432/hiw, db2:5432/hiw)" in good.stdout
    write(tmp_path / "targets" / "b.yaml", "- targets: [db3:5432]\n  labels: {password: x}\n")
    bad = validate()
    assert bad.returncode == 2
    assert f"hiw-monitor: discovery file {tmp_path / 'targets' / 'b.yaml'}: " \
        "[0].labels.password: refused" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_the_fleet_families_are_the_ones_docs_metrics_md_lists(fleet, tmp_path):
    """docs/metrics.md's fleet section lists exactly what an agent with discovery files
    (one of them bad) and a shard exports about its fleet."""
    path, config = fleet
    write(path, group("127.0.0.1:1", name="a", team="x"))
    (path.parent / "bad.yaml").write_text("- targets: [")
    agent = Agent(dataclasses.replace(config, shard=parse_shard("0/2")))
    try:
        exported = {f"{f.name}_total" if f.type == "counter" else f.name
                    for f in agent.store.agent_families()}
    finally:
        agent.stop()
    text = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
    section = text.split("## Fleet: targets, discovery and sharding", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(hiw_[a-z0-9_]+)` \|", section, re.MULTILINE))
    assert exported == documented
