"""Fixtures for the resource tests."""

from collections.abc import Iterator

import pytest

from mlassets_tests.roles.fake_batch import FakeBatchService


@pytest.fixture
def fake_batch() -> Iterator[FakeBatchService]:
    """A fake Azure Batch service on a free local port, stopped after the test."""
    service = FakeBatchService()
    service.start()
    try:
        yield service
    finally:
        service.stop()
