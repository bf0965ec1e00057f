#!/usr/bin/env bash
# Mutation testing of the engine core and the news/WeChat publish and submit rules with
# mutmut 3 (settings: [mutmut] in setup.cfg). Slow: every mutant runs the in-process tests
# that cover its function, one at a time (they share one test database and Redis db).
#
#   DB_NAME=nextevent_mut REDIS_DB=5 bench/mutation.sh            # the whole configured set
#   DB_NAME=nextevent_mut REDIS_DB=5 bench/mutation.sh 'jobs.services.running*'   # a subset (mutant name glob)
#
# Prints the score (killed / (killed + survived); timeouts count as killed, "no tests" as
# survived) and every survivor; `.venv/bin/mutmut show <name>` shows one's diff.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
: "${REDIS_DB:=15}"
export REDIS_DB
# The test database is created once (--reuse-db in setup.cfg) before the mutants run.
python -m pytest -q -p no:cacheprovider --create-db -m "not cluster and not browser" tests/test_engine_api.py -x >/dev/null
rm -rf mutants
mutmut run --max-children 1 "$@" || true
mutmut results --all true > var/mutmut-results.txt 2>&1 || mutmut results > var/mutmut-results.txt 2>&1 || true
python - <<'PY'
import re
from pathlib import Path

lines = Path("var/mutmut-results.txt").read_text().splitlines()
status = {}
for line in lines:
    m = re.match(r"\s*(\S+):\s*(\w[\w ]*)$", line)
    if m:
        status[m.group(1)] = m.group(2).strip()
counts = {}
for s in status.values():
    counts[s] = counts.get(s, 0) + 1
killed = counts.get("killed", 0) + counts.get("timeout", 0)
survived = counts.get("survived", 0) + counts.get("no tests", 0)
print("mutmut:", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
if killed + survived:
    print(f"mutation score: {killed}/{killed + survived} = {100 * killed / (killed + survived):.1f} %")
for name, s in sorted(status.items()):
    if s in ("survived", "no tests"):
        print(f"  {s}: {name}")
PY
