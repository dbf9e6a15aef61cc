"""Hypothesis profiles for every test directory.

`ci` (the default): derandomized, so each run of `make test` tests the same examples
and a fresh clone passes or fails the same way every time; no example database; no
deadlines or timing-based health checks (the machines running the suite are shared).
`long`: a random search with many more examples, for `make fuzz`
(HYPOTHESIS_PROFILE=long). Whatever a long run finds becomes a plain unit test.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_TIMING = [HealthCheck.too_slow]
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True,
                          suppress_health_check=_TIMING)
settings.register_profile("long", max_examples=20_000, deadline=None, print_blob=True,
                          suppress_health_check=_TIMING)
settings.register_profile("dev", deadline=None, suppress_health_check=_TIMING)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or "ci")
