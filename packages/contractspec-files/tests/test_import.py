"""The package imports and reports its version."""

import contractspec.files


def test_version_is_a_string() -> None:
    """The version comes from the installed distribution metadata."""
    assert isinstance(contractspec.files.__version__, str)
    assert contractspec.files.__version__ != ""
