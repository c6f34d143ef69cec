"""Shared by the delta unit tests: the session's fixture images (tests/delta_fixtures.py)."""

from tests.delta_fixtures import small  # noqa: F401 - the session fixture
