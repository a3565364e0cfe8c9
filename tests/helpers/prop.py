"""Property-based testing helpers (hypothesis): every property runs twice, a cheap default budget in every
test run and twice as many cases under ``@pytest.mark.slow``.

``fast, slow = cases(check, n, *strategies)`` returns the two test functions; a module binds them to
``test_<name>`` and ``test_<name>_many``.  Examples are derandomized (the same cases on every machine,
so CI is reproducible) and no example database is written.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

SLOW_FACTOR = 2
_COMMON = dict(deadline=None, database=None, derandomize=True, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                      HealthCheck.data_too_large, HealthCheck.large_base_example])


def cases(check, n: int, *strategies, **kw_strategies):
    """``(fast, slow)`` hypothesis tests of ``check`` with ``n`` and ``SLOW_FACTOR * n`` examples."""
    fast = settings(max_examples=n, **_COMMON)(given(*strategies, **kw_strategies)(check))
    slow = settings(max_examples=SLOW_FACTOR * n, derandomize=False, **{k: v for k, v in _COMMON.items()
                                                                         if k != "derandomize"})(
        given(*strategies, **kw_strategies)(check))
    return fast, pytest.mark.slow(slow)


def scratch_dir(prefix: str) -> str:
    """A fresh directory for many small files: in memory (``/dev/shm``) where there is one, else the temp dir.

    Writing a file costs ~4 ms on some disks and ~10 us in memory; property tests write thousands.
    """
    import os
    import tempfile

    import atexit
    import shutil

    shm = "/dev/shm"
    base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
    d = tempfile.mkdtemp(prefix=prefix, dir=base)
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    return d
