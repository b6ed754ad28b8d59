"""The Python package: ``python -m build`` makes an sdist and a wheel (the wheel built
from the sdist, so the sdist is complete) that ``twine check --strict`` accepts, that
install with pipx and run outside the repository, with one version everywhere.

The build starts from a copy of the tracked files (``git ls-files``, their contents in
the work tree), so build/, egg-info and untracked files of a work tree never leak into
it. It needs the package index for the build's setuptools and the agent's dependencies
(CI has it); without one the module skips, under CI=true it fails.
"""

from __future__ import annotations

import ast
import email.parser
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tools import IN_CI

ROOT = Path(__file__).parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
pytestmark = pytest.mark.timeout(900)  # builds and installs with pip: hang guard only


def source_version() -> str:
    """``__version__`` as written in hiw_monitor/__init__.py (the one place it is set)."""
    tree = ast.parse((ROOT / "hiw_monitor" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in node.targets] == [
                "__version__"]:
            return ast.literal_eval(node.value)
    raise AssertionError("no __version__ in hiw_monitor/__init__.py")


VERSION = source_version()


def unavailable(message: str) -> None:
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def run(*argv: str | Path, cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run outside the repository with a clean environment (no venv, no PYTHONPATH)."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PIP_REQUIRE_VIRTUALENV")
            and not k.startswith(("HIW_", "PIPX_"))}
    return subprocess.run([str(a) for a in argv], cwd=cwd, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=timeout, check=False)


@dataclass
class Built:
    source: Path  # the clean copy the build ran in
    sdist: Path
    wheel: Path
    log: str


def tracked_files() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        unavailable("not a git checkout: the package is built from `git ls-files`")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                         check=True, timeout=60).stdout.decode()
    return [name for name in out.split("\0") if name]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    tmp = tmp_path_factory.mktemp("package")
    source = tmp / "hiw-monitor"
    for name in tracked_files():
        path = ROOT / name
        if path.is_file():  # a tracked file deleted in the work tree is left out
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, source / name)
    dist = tmp / "dist"
    # isolated: the build gets setuptools>=77 from the index, as pip install and CI do
    result = run(sys.executable, "-m", "build", "--outdir", dist, source, cwd=tmp)
    log = result.stdout + result.stderr
    if result.returncode != 0:
        if re.search(r"(?i)could not find a version|connection|network|resolve", log):
            unavailable(f"the build needs the package index:\n{log[-3000:]}")
        pytest.fail(f"python -m build failed:\n{log[-6000:]}")
    sdists = list(dist.glob("*.tar.gz"))
    wheels = list(dist.glob("*.whl"))
    assert len(sdists) == 1, sdists
    assert len(wheels) == 1, wheels
    return Built(source, sdists[0], wheels[0], log)


def wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(archive.read(name).decode())


def sdist_names(sdist: Path) -> set[str]:
    with tarfile.open(sdist) as archive:
        return {m.name.split("/", 1)[1] for m in archive.getmembers()
                if "/" in m.name and m.isfile()}


# --- the artifacts ----------------------------------------------------------------------


def test_build_makes_sdist_and_wheel_named_by_the_version(built):
    assert built.sdist.name == f"hiw_monitor-{VERSION}.tar.gz"
    assert built.wheel.name == f"hiw_monitor-{VERSION}-py3-none-any.whl"
    assert "Building wheel from sdist" in built.log  # the wheel came out of the sdist
    # setuptools' deprecation warnings on our configuration become errors one day
    deprecated = re.findall(r"(?im)^.*(?:SetuptoolsDeprecationWarning|`project\.\S*`.*"
                            r"deprecated|tool\.setuptools.*deprecated).*$", built.log)
    assert deprecated == [], built.log[-6000:]


def test_twine_check_strict_accepts_both(built):
    twine = shutil.which("twine", path=str(Path(sys.executable).parent)) or "twine"
    result = run(twine, "check", "--strict", built.sdist, built.wheel, cwd=built.sdist.parent,
                 env={"NO_COLOR": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_version_comes_from_one_place(built):
    assert "version" not in PROJECT, "the version is dynamic: hiw_monitor.__version__"
    assert PROJECT["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "hiw_monitor.__version__"}
    assert wheel_metadata(built.wheel)["Version"] == VERSION
    with tarfile.open(built.sdist) as archive:
        member = archive.extractfile(f"hiw_monitor-{VERSION}/PKG-INFO")
        assert member is not None
        assert email.parser.Parser().parsestr(member.read().decode())["Version"] == VERSION
    # the changelog has this version as its latest release
    changelog = (ROOT / "CHANGELOG.md").read_text()
    releases = re.findall(r"(?m)^## \[(\d[^\]]*)\] - \d{4}-\d\d-\d\d$", changelog)
    assert releases, "no release heading in CHANGELOG.md"
    assert releases[0] == VERSION
    assert "## [Unreleased]" in changelog
    assert changelog.index("## [Unreleased]") < changelog.index(f"## [{VERSION}]")


def test_metadata_is_what_an_index_wants(built):
    meta = wheel_metadata(built.wheel)
    assert meta["Name"] == "hiw-monitor"
    assert meta["Summary"] == PROJECT["description"]
    assert meta["Requires-Python"] == ">=3.11"
    assert meta["License-Expression"] == "MIT"
    assert meta["Description-Content-Type"] == "text/markdown"
    assert meta.get_payload().startswith("# hiw-monitor")  # the README as description
    assert "postgresql" in (meta["Keywords"] or "")
    classifiers = meta.get_all("Classifier")
    assert classifiers == PROJECT["classifiers"]
    for wanted in ("Programming Language :: Python :: 3.11", "Typing :: Typed",
                   "Topic :: System :: Monitoring", "Operating System :: POSIX :: Linux"):
        assert wanted in classifiers
    # the Python versions claimed are those requires-python allows
    claimed = [c.rsplit(" ", 1)[1] for c in classifiers
               if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)]
    assert all(tuple(map(int, v.split("."))) >= (3, 11) for v in claimed)
    # every run-time dependency, none of the extras' by default
    requires = meta.get_all("Requires-Dist")
    plain = [r for r in requires if "extra ==" not in r]
    assert len(plain) == len(PROJECT["dependencies"])
    for dependency in PROJECT["dependencies"]:
        name = re.match(r"[A-Za-z0-9_.-]+", dependency)[0]
        assert any(r.lower().startswith(name.lower()) for r in plain), dependency
    assert set(meta.get_all("Provides-Extra")) == set(PROJECT["optional-dependencies"])


def test_wheel_holds_the_package_and_what_it_reads_at_run_time(built):
    with zipfile.ZipFile(built.wheel) as archive:
        names = set(archive.namelist())
        entry_points = archive.read(f"hiw_monitor-{VERSION}.dist-info/entry_points.txt")
    modules = {n for n in tracked_files() if n.startswith("hiw_monitor/") and
               n.endswith(".py")}
    assert modules <= names, sorted(modules - names)
    assert "hiw_monitor/demo/schema.sql" in names  # the demo's database
    assert "hiw_monitor/py.typed" in names  # PEP 561: mypy users see the annotations
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"hiw_monitor", f"hiw_monitor-{VERSION}.dist-info"}, tops
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert b"hiw-monitor = hiw_monitor.cli:main" in entry_points
    # the package data: every non-Python file under hiw_monitor/ that git tracks
    data = {n for n in tracked_files() if n.startswith("hiw_monitor/") and
            not n.endswith(".py")}
    assert data <= names, sorted(data - names)


def test_sdist_holds_what_the_tests_and_a_rebuild_need(built):
    names = sdist_names(built.sdist)
    tracked = set(tracked_files())
    for wanted in ("pyproject.toml", "README.md", "CHANGELOG.md", "MANIFEST.in",
                   "PKG-INFO", "config/hiw_monitor.yaml", "hiw_monitor/demo/schema.sql",
                   "hiw_monitor/py.typed", "deploy/systemd/hiw-monitor.service",
                   "deploy/systemd/hiw-monitor.env.example", "tests/conftest.py",
                   "tests/deploy/test_package.py", "scripts/test.sh"):
        assert wanted in names, wanted
    # whole directories: every tracked file of each
    for folder in ("hiw_monitor/", "tests/", "docs/", "config/", "alerts/", "dashboards/",
                   "deploy/", "bench/"):
        missing = {n for n in tracked if n.startswith(folder)} - names
        assert not missing, sorted(missing)[:20]
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    # nothing of the CI machinery, nothing untracked beyond the build's own metadata
    extra = {n for n in names - tracked if not n.startswith("hiw_monitor.egg-info/")}
    assert extra <= {"PKG-INFO", "setup.cfg"}, sorted(extra)


# --- installed, outside the repository ------------------------------------------------------


@dataclass
class Installed:
    how: str  # "pipx" or "venv"
    bin: Path  # the hiw-monitor command
    python: Path  # the interpreter of its venv
    home: Path  # a directory outside the repository to run in


def pipx_from_index(tmp: Path) -> Path | None:
    """pipx, installed from the package index into a venv of its own; None if the index
    cannot give it."""
    tools = tmp / "pipx-venv"
    venv.EnvBuilder(with_pip=True).create(tools)
    result = run(tools / "bin" / "python", "-m", "pip", "install", "-q", "pipx", cwd=tmp)
    if result.returncode != 0:
        print(f"pipx not installable from the index: {result.stderr[-2000:]}")
        return None
    return tools / "bin" / "pipx"


@pytest.fixture(scope="module")
def installed(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    tmp = tmp_path_factory.mktemp("installed")
    home = tmp / "elsewhere"
    home.mkdir()
    pipx = pipx_from_index(tmp)
    if pipx is not None:
        env = {"PIPX_HOME": str(tmp / "pipx-home"), "PIPX_BIN_DIR": str(tmp / "pipx-bin"),
               "PIPX_MAN_DIR": str(tmp / "pipx-man"), "HOME": str(home)}
        result = run(pipx, "install", "--python", sys.executable, built.wheel, cwd=home,
                     env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        venv_dir = tmp / "pipx-home" / "venvs" / "hiw-monitor"
        yield Installed("pipx", tmp / "pipx-bin" / "hiw-monitor", venv_dir / "bin" / "python",
                        home)
        return
    if IN_CI:
        pytest.fail("pipx could not be installed from the package index")
    # no pipx: what pipx does by hand (its own venv, the wheel and its dependencies)
    venv_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=True).create(venv_dir)
    result = run(venv_dir / "bin" / "python", "-m", "pip", "install", "-q", built.wheel,
                 cwd=home)
    if result.returncode != 0:
        unavailable(f"installing the wheel needs the package index:\n{result.stderr[-3000:]}")
    yield Installed("venv", venv_dir / "bin" / "hiw-monitor", venv_dir / "bin" / "python",
                    home)


def test_installed_with_pipx(installed):
    assert installed.how == "pipx", "pipx was not installable: checked in a plain venv"
    assert installed.bin.is_symlink() or installed.bin.exists()


def test_installed_version_agrees_everywhere(installed, built):
    result = run(installed.bin, "--version", cwd=installed.home)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"hiw-monitor {VERSION}"
    probe = ("import importlib.metadata, hiw_monitor; "
             "print(importlib.metadata.version('hiw-monitor')); print(hiw_monitor.__version__); "
             "print(hiw_monitor.__file__)")
    result = run(installed.python, "-c", probe, cwd=installed.home)
    assert result.returncode == 0, result.stderr
    metadata_version, module_version, module_file = result.stdout.split()
    assert metadata_version == module_version == VERSION
    assert wheel_metadata(built.wheel)["Version"] == VERSION
    # the installed copy, not the checkout
    assert not Path(module_file).is_relative_to(ROOT), module_file
    assert Path(module_file).is_relative_to(installed.python.parents[1]), module_file


def test_installed_agent_runs_its_commands_outside_the_repository(installed):
    result = run(installed.bin, "once", "--help", cwd=installed.home)
    assert result.returncode == 0, result.stderr
    assert "--collector" in result.stdout
    # the example config with its custom collectors directory, copied out of the repo
    config = installed.home / "config"
    shutil.copytree(ROOT / "config", config)
    result = run(installed.bin, "validate-config", config / "hiw_monitor.yaml",
                 cwd=installed.home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ": OK:" in result.stdout
    assert "custom:job_queue" in result.stdout  # config/custom/ was read
    # a config error is still one line from the installed command
    bad = installed.home / "bad.yaml"
    bad.write_text("targets: [\n")
    result = run(installed.bin, "validate-config", bad, cwd=installed.home)
    assert result.returncode == 2
    assert result.stderr.startswith("hiw-monitor: configuration error")


def test_installed_package_has_its_data(installed):
    probe = ("from hiw_monitor.demo.cluster import SCHEMA_SQL; "
             "from hiw_monitor.collectors.custom import builtin_metric_names; "
             "import importlib.resources as r; "
             "print(len(SCHEMA_SQL.read_text()) > 1000, "
             "r.files('hiw_monitor').joinpath('py.typed').is_file(), "
             "'hiw_up' in builtin_metric_names())")
    result = run(installed.python, "-c", probe, cwd=installed.home)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "True"]
