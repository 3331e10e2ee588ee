"""pytest plugin of contractspec-testing (loaded through the `pytest11` entry point)."""

from __future__ import annotations
