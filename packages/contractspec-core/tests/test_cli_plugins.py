"""Other packages add `contractspec` sub-commands through the `contractspec.cli` entry points."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

typer = pytest.importorskip("typer")

from contractspec.core.cli import CLI_ENTRY_POINTS, mount_plugins  # noqa: E402


def test_installed_plugins_are_mounted_by_name() -> None:
    """Every declared entry point becomes a sub-command of a fresh app."""
    declared = sorted(ep.name for ep in entry_points(group=CLI_ENTRY_POINTS))
    if not declared:
        pytest.skip("no package declaring contractspec.cli commands is installed")
    root = typer.Typer()
    assert mount_plugins(root) == declared
    assert sorted(group.name for group in root.registered_groups) == declared
