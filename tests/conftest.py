"""Settings shared by the whole suite.

Hypothesis: no per-example deadline. The property tests check what code returns, never how fast
(speed lives in benchmarks/); hypothesis' default 200 ms deadline would turn a loaded CI machine's
pause into a ``Flaky``/``DeadlineExceeded`` failure. Tests that set their own ``@settings`` inherit
this default for every field they leave out.
"""

from hypothesis import settings

settings.register_profile("raftlib", deadline=None)
settings.load_profile("raftlib")
