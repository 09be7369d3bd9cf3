from __future__ import annotations

import pytest

from activemm import Machine

from .helpers import machine


@pytest.fixture
def x86() -> Machine:
    return machine()
