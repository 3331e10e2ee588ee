"""The one interface to every check: `uv run nox -s <session>`.

Sessions:

* `tests`      — every package's tests and the examples' tests, on memory + SQLite, and on
                 PostgreSQL when `CONTRACTSPEC_TEST_POSTGRES_DSN` is set (`.ci/run` starts one).
* `isolation`  — each package installed alone in a fresh venv with only its declared
                 dependencies (plus its extras and its `dev` group), imported and tested.
* `lint`       — `ruff check` and `ruff format --check`.
* `typecheck`  — mypy strict over `packages/*/src` and `examples/`.
* `docs`       — `mkdocs build --strict`.
* `bench`      — every script in `benchmarks/`, side by side with its peer.
"""

from __future__ import annotations

import os
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
    targets += [str(p) for p in sorted((ROOT / "examples").glob("*/tests"))]
    session.run("pytest", *(session.posargs or targets))


@nox.session
@nox.parametrize("package", PACKAGES)
def isolation(session: nox.Session, package: str) -> None:
    """Install one package alone (its dependencies, extras and dev group) and run its tests."""
    _sync(session, "--package", package, "--all-extras")
    module = "contractspec." + package.removeprefix("contractspec-")
    session.run("python", "-c", f"import {module}; print({module}.__name__, 'imports alone')")
    session.run("pytest", str(ROOT / "packages" / package / "tests"), *session.posargs)


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
