"""The one interface to every check: `uv run nox -s <session>`.

Sessions:

* `tests`      — every package's tests and the examples' tests, on memory + SQLite, and on
                 PostgreSQL when `CONTRACTSPEC_TEST_POSTGRES_DSN` is set (`.ci/run` starts one).
* `isolation`  — each package installed alone in a fresh venv with only its declared
                 dependencies (plus its extras and its `dev` group), imported and tested on
                 memory + SQLite (PostgreSQL cases run in `tests`).
* `lint`       — `ruff check` and `ruff format --check`.
* `typecheck`  — mypy strict over `packages/*/src` and `examples/`.
* `docs`       — `mkdocs build --strict`.
* `bench`      — every script in `benchmarks/`, side by side with its peer.
* `packaging`  — build every package's wheel and sdist, `twine check --strict` them, check the
                 LICENSE is inside and no internal note is, install all wheels with plain pip into
                 a fresh `python -m venv`, import each package and run `contractspec --version`.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).parent
PACKAGES = sorted(p.name for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").exists())


def _sync(session: nox.Session, *args: str) -> None:
    """Install the locked workspace into the session's venv with `uv sync`."""
    session.run_install(
        "uv",
        "sync",
        "--frozen",
        *args,
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
        external=True,
    )


@nox.session
def tests(session: nox.Session) -> None:
    """Run every test: packages and examples (PostgreSQL too when a DSN is set)."""
    _sync(session, "--all-packages", "--all-extras", "--group", "dev")
    if not os.environ.get("CONTRACTSPEC_TEST_POSTGRES_DSN"):
        session.log("CONTRACTSPEC_TEST_POSTGRES_DSN is unset: PostgreSQL cases are skipped")
    targets = [str(ROOT / "packages" / name / "tests") for name in PACKAGES]
    targets += [str(p) for p in sorted((ROOT / "examples").glob("*/tests"))] + [str(ROOT / "tests")]
    session.run("pytest", *(session.posargs or targets))


@nox.session
@nox.parametrize("package", PACKAGES)
def isolation(session: nox.Session, package: str) -> None:
    """Install one package alone (its dependencies, extras and dev group) and run its tests.

    What this session proves is the package's dependency set, so its tests run on memory and
    SQLite (and real NATS and browser where they use them); the PostgreSQL cases are the same
    code with every package installed, and run in `tests`. `CONTRACTSPEC_ISOLATION_POSTGRES=1`
    keeps them here too.
    """
    _sync(session, "--package", package, "--all-extras")
    module = "contractspec." + package.removeprefix("contractspec-")
    session.run("python", "-c", f"import {module}; print({module}.__name__, 'imports alone')")
    env = {}
    if os.environ.get("CONTRACTSPEC_ISOLATION_POSTGRES") != "1":
        env = {"CONTRACTSPEC_TEST_POSTGRES_DSN": "", "CONTRACTSPEC_REQUIRE_POSTGRES": "0"}
    session.run("pytest", str(ROOT / "packages" / package / "tests"), *session.posargs, env=env)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole workspace."""
    _sync(session, "--only-group", "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over every package's src/ and the examples."""
    _sync(session, "--all-packages", "--all-extras", "--group", "dev")
    sources = [str(ROOT / "packages" / name / "src") for name in PACKAGES] + [
        str(ROOT / "examples")
    ]
    session.run(
        "mypy",
        *[
            arg
            for name in PACKAGES
            for arg in ("-p", "contractspec." + name.removeprefix("contractspec-"))
        ],
        *[
            arg
            for p in sorted((ROOT / "examples").iterdir())
            if (p / "__init__.py").exists()
            for arg in ("-p", p.name)
        ],
        env={"MYPYPATH": os.pathsep.join(sources)},
    )


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation with mkdocs --strict."""
    _sync(session, "--all-packages", "--all-extras", "--group", "docs")
    session.run("mkdocs", "build", "--strict", "--site-dir", str(ROOT / "site"))


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks in benchmarks/ (each prints both sides and the ratio)."""
    _sync(session, "--all-packages", "--all-extras", "--group", "bench")
    scripts = session.posargs or sorted(str(p) for p in (ROOT / "benchmarks").glob("*.py"))
    for script in scripts:
        session.log(f"--- {Path(script).name}")
        session.run("python", script)


#: Files at a package's root that are for the repository only (never in an sdist).
INTERNAL_NOTES = ("PART_B_NEEDS.md",)


def _check_archives(session: nox.Session, dist: Path) -> None:
    """Every wheel and sdist carries LICENSE (and the metadata names it); no internal notes."""
    for name in PACKAGES:
        stem = name.replace("-", "_")
        wheels = sorted(dist.glob(f"{stem}-*.whl"))
        sdists = sorted(dist.glob(f"{stem}-*.tar.gz"))
        if len(wheels) != 1 or len(sdists) != 1:
            session.error(f"{name}: expected one wheel and one sdist in {dist}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            files = wheel.namelist()
            metadata = wheel.read(next(f for f in files if f.endswith(".dist-info/METADATA")))
        if not any(f.endswith(".dist-info/licenses/LICENSE") for f in files):
            session.error(f"{wheels[0].name} has no LICENSE")
        if b"License-File: LICENSE" not in metadata or b"License-Expression: MIT" not in metadata:
            session.error(f"{wheels[0].name}: METADATA does not declare the MIT LICENSE file")
        with tarfile.open(sdists[0]) as sdist:
            members = [m.split("/", 1)[1] for m in sdist.getnames() if "/" in m]
        if "LICENSE" not in members:
            session.error(f"{sdists[0].name} has no LICENSE")
        leaked = [m for m in members if Path(m).name in INTERNAL_NOTES]
        if leaked:
            session.error(f"{sdists[0].name} ships internal notes: {leaked}")
    session.log(f"LICENSE in all {len(PACKAGES)} wheels and sdists; no internal notes")


@nox.session
def packaging(session: nox.Session) -> None:
    """Build, twine-check and pip-install every published package into a fresh venv."""
    session.install("twine>=6.1")
    work = Path(tempfile.mkdtemp(prefix="contractspec-packaging-"))
    try:
        _build_check_install(session, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build_check_install(session: nox.Session, work: Path) -> None:
    dist = work / "dist"
    for name in PACKAGES:
        session.run(
            "uv", "build", "--package", name, "--out-dir", str(dist), "--quiet", external=True
        )
    archives = sorted(str(p) for p in [*dist.glob("*.whl"), *dist.glob("*.tar.gz")])
    session.run("twine", "check", "--strict", *archives)
    _check_archives(session, dist)

    venv = work / "venv"
    session.run("python", "-m", "venv", str(venv))
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    wheels = sorted(str(p) for p in dist.glob("*.whl"))
    core = next(w for w in wheels if Path(w).name.startswith("contractspec_core-"))
    requirements = [f"{core}[cli,sql,postgres,http]" if w == core else w for w in wheels]
    session.run(
        str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--find-links", str(dist), *requirements, external=True,
    )  # fmt: skip
    modules = ["contractspec." + name.removeprefix("contractspec-") for name in PACKAGES]
    session.run(
        str(bin_dir / "python"), "-c",
        f"import {', '.join(modules)}; print('imported', {len(modules)}, 'packages')",
        external=True,
    )  # fmt: skip
    versions = session.run(str(bin_dir / "contractspec"), "--version", external=True, silent=True)
    listed = {line.split()[0] for line in str(versions).splitlines() if line.strip()}
    if listed != set(PACKAGES):
        session.error(f"contractspec --version listed {sorted(listed)}, expected {PACKAGES}")
    session.log(str(versions).strip())
