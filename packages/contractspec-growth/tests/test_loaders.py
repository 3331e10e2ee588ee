"""Data loaders take a path and, when nothing is there, say where to get the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from contractspec.core import ConfigurationError
from contractspec.growth.analytics import CDNOW_DOWNLOAD_URL, load_cdnow


def test_a_missing_file_names_the_path_tried_and_where_to_download_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative path that resolves to nothing raises ConfigurationError, not FileNotFoundError."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError) as caught:
        load_cdnow("../shared/data/cdnow/CDNOW_master.txt")
    error = caught.value
    tried = tmp_path / "../shared/data/cdnow/CDNOW_master.txt"
    assert f"no file at {tried}" in str(error)
    assert f"working directory {tmp_path}" in str(error)
    assert f"download CDNOW_master.txt from {CDNOW_DOWNLOAD_URL}" in str(error)
    assert error.details == {"field": "path", "path": str(tried)}


def test_a_directory_is_not_the_file(tmp_path: Path) -> None:
    """Passing the data folder instead of the file fails the same clear way."""
    with pytest.raises(ConfigurationError, match=f"no file at {tmp_path}"):
        load_cdnow(tmp_path)


def test_any_path_like_loads(tmp_path: Path) -> None:
    """A file anywhere (not only inside the repository) loads, from str or Path."""
    data = tmp_path / "cdnow.txt"
    data.write_text("00001 19970101 1 11.77\n00002 19970112 2 89.00\n", encoding="utf-8")
    for path in (data, str(data)):
        tx = load_cdnow(path)
        assert tx.customer_ids.tolist() == ["00001", "00002"]
        assert tx.amounts.tolist() == [11.77, 89.0]
