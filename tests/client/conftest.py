"""The SDK's tests share one gateway (tests/client/sdk_support.py) across their modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.client.sdk_support import sdk_deployment
from tests.conftest import Deployment


@pytest.fixture(scope="package")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with sdk_deployment(tmp_path_factory.mktemp("sdk")) as running:
        yield running
