"""Hypothesis profiles for the suite, and ``run_python``, its way to run a
script in a fresh process.

``default``: each property test draws the same examples on every run
(``derandomize``), so a run of CI fails only on a change, never on a new
draw; ``explore`` (``pytest --hypothesis-profile=explore``) draws afresh
each run, for looking for counterexamples by hand.
A counterexample found that way is pinned with ``@example``.
"""

import subprocess
import sys

import pytest
from hypothesis import settings

settings.register_profile("default", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("default")


@pytest.fixture
def run_python():
    """``run_python(code, *args, timeout=..., env=None)``: ``python -c code
    *args`` in a fresh process, its output captured as text.  A process that
    hangs prints every thread's stack to its stderr and exits a few seconds
    before ``timeout`` (``faulthandler.dump_traceback_later``), so the test's
    assertion shows where it stopped instead of a bare ``TimeoutExpired``."""

    def run(code: str, *args, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
        dump_after = timeout - min(10.0, timeout / 10)
        watchdog = f"import faulthandler; faulthandler.dump_traceback_later({dump_after}, exit=True)\n"
        return subprocess.run([sys.executable, "-c", watchdog + code, *map(str, args)], capture_output=True,
                              text=True, timeout=timeout, env=env)  # fmt: skip

    return run
