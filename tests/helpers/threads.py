"""One torch thread for the tests of a module: tiny models gain nothing from threads, and on a loaded 2-core
machine intra-op threads thrash (measured: path patching 6.5 s with the default threads, 0.7 s with one).

Use: ``from tests.helpers.threads import one_thread  # noqa: F401`` (an autouse, module-scoped fixture)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
