"""Hypothesis settings for the property-based (fuzz) tests: imported by each fuzz module.

Profiles (HYPOTHESIS_PROFILE=<name>, default "ci"):
- ci: 50 examples per test, enough to catch regressions in the suite's time budget;
- long: 2,000 examples per test, for a deliberate fuzzing run
  (`HYPOTHESIS_PROFILE=long ./scripts/test tests/test_analytics_fuzz.py`).
No deadline: examples talk to the real MariaDB and Redis on a shared machine.
"""

import os

from hypothesis import HealthCheck, settings

_common = {
    "deadline": None,
    # Each fuzz test creates its data once and runs @given inside; examples share the
    # test's database on purpose (counts accumulate and are checked at the end).
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    "print_blob": True,
}
settings.register_profile("ci", max_examples=50, **_common)
settings.register_profile("long", max_examples=2000, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
