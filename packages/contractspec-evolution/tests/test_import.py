"""The package imports and reports its version."""

import contractspec.evolution


def test_version_is_a_string() -> None:
    """The version comes from the installed distribution metadata."""
    assert isinstance(contractspec.evolution.__version__, str)
    assert contractspec.evolution.__version__ != ""
