"""Hypothesis profiles for the suite.

``default``: each property test draws the same examples on every run
(``derandomize``), so a run of CI fails only on a change, never on a new
draw; ``explore`` (``pytest --hypothesis-profile=explore``) draws afresh
each run, for looking for counterexamples by hand.
A counterexample found that way is pinned with ``@example``.
"""

from hypothesis import settings

settings.register_profile("default", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("default")
