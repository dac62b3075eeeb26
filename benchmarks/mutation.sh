#!/usr/bin/env bash
# Mutation testing of one of the modules that decide (docs/testing.md, "Mutation testing").
# Not part of CI: run it by hand after `pip install '.[test,mutation]'`.
#
#   benchmarks/mutation.sh MODULE [TEST_FILE ...]
#   benchmarks/mutation.sh --survivors MODULE [TEST_FILE ...]
#
# MODULE is policy, limiter, health, race or budget: router/_MODULE.py is mutated, and
# each mutant is run against the test files given, by default tests/test_MODULE.py plus
# tests/test_mutation_MODULE.py when it exists.  mutmut runs in a scratch copy of the
# working tree (tracked and untracked, not ignored, files), .mutation/MODULE/, so the
# working tree is never mutated and two modules can run side by side; every run starts
# afresh.  Afterwards, in that directory: `mutmut results` lists the survivors,
# `mutmut show NAME` shows one.  The last line printed is the score.
#
# --survivors reruns, in a fresh copy, only the mutants the last session of MODULE did
# not kill (survivors, timeouts, mutants no test reached), against the tests as they are
# now, and scores the module as the last session's kills plus this run's.  That holds
# while router/_MODULE.py is unchanged (checked) and tests were only added.  The last
# session is kept in .mutation/MODULE.prev/.
set -euo pipefail

usage="usage: benchmarks/mutation.sh [--survivors] {policy|limiter|health|race|budget} [TEST_FILE ...]"
survivors=0
if [ "${1:-}" = --survivors ]; then
    survivors=1
    shift
fi
module=${1:-}
case $module in
    policy | limiter | health | race | budget) ;;
    *)
        echo "$usage" >&2
        exit 2
        ;;
esac
shift

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if ! command -v mutmut >/dev/null; then
    echo "mutmut is not installed: pip install '.[mutation]'" >&2
    exit 2
fi

tests=("$@")
if [ ${#tests[@]} -eq 0 ]; then
    tests=("tests/test_$module.py")
    if [ -f "tests/test_mutation_$module.py" ]; then
        tests+=("tests/test_mutation_$module.py")
    fi
fi
for t in "${tests[@]}"; do
    if [ ! -f "$t" ]; then
        echo "no such test file: $t" >&2
        exit 2
    fi
done

work="$root/.mutation/$module"
rerun=()
base_killed=0
if [ $survivors = 1 ]; then
    prev="$root/.mutation/$module.prev"
    if [ ! -f "$work/mutants/mutmut-cicd-stats.json" ]; then
        echo "no finished session in $work: run benchmarks/mutation.sh $module first" >&2
        exit 2
    fi
    if [ -e "$work/.mutation-only" ]; then
        echo "the last session of $module ran named mutants only (MUTATION_ONLY)" >&2
        exit 2
    fi
    if ! cmp -s "router/_$module.py" "$work/router/_$module.py"; then
        echo "router/_$module.py changed since the last session: run it afresh" >&2
        exit 2
    fi
    mapfile -t rerun < <(cd "$work" && env -u PYTHONPATH mutmut results --all true \
        | grep -v ': killed$' | sed -E 's/^ +//; s/: .*$//')
    base_killed=$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["killed"])' \
        "$work/mutants/mutmut-cicd-stats.json")
    if [ ${#rerun[@]} -eq 0 ]; then
        echo "the last session of $module killed every mutant"
        exit 0
    fi
    rm -rf "$prev"
    mv "$work" "$prev"
fi
if [ -n "${MUTATION_ONLY:-}" ]; then
    # A file of mutant names (one a line, as `mutmut results` prints them): run only those.
    mapfile -t rerun < <(sed -E 's/^ +//; s/: .*$//' "$MUTATION_ONLY" | grep .)
fi
rm -rf "$work"
mkdir -p "$work"
git ls-files -z --cached --others --exclude-standard \
    | xargs -0 -I{} sh -c 'test -e "$1" && printf "%s\0" "$1"' _ {} \
    | tar --null -T - -cf - | tar -xf - -C "$work"

# The session's configuration: one module, its tests; appended to the copy's pyproject.
python - "$work/pyproject.toml" "router/_$module.py" "${tests[@]}" <<'EOF'
import json
import os
import sys

path, source, *tests = sys.argv[1:]
with open(path, "a", encoding="utf-8") as f:
    f.write(
        "\n[tool.mutmut]\n"
        'source_paths = ["router/"]\n'
        f"only_mutate = [{json.dumps(source)}]\n"
        'also_copy = ["providers/", "tests/", "docs/", "README.md"]\n'
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
        # `-n 0`: mutmut runs pytest in its own process (its trampolines record there),
        # never in pyproject's xdist workers.
        # MUTATION_PYTEST_ARGS: more pytest arguments for every run of the session,
        # e.g. "--deselect tests/test_x.py::test_slow_property".
        "pytest_add_cli_args = "
        f"{json.dumps(['-n', '0', '-p', 'no:cacheprovider', '-q', '-p', 'tests._mutation_profile', *os.environ.get('MUTATION_PYTEST_ARGS', '').split()])}\n"
        # A mutant's tests get 10 x (their clean run time + 5 s) of wall-clock time (and
        # twice that of CPU time) before it counts as a timeout (a loop that never
        # ends); generous, because the machine may be loaded.
        "timeout_multiplier = 10.0\n"
        "timeout_constant = 5.0\n"
    )
EOF

# mutmut's trampolines slow every call of the module several times over: hypothesis's
# 200 ms deadline would fail tests for their speed, not their behaviour.  Off, in the copy.
cat >"$work/tests/_mutation_profile.py" <<'EOF'
"""Loaded by benchmarks/mutation.sh (pytest -p): no hypothesis deadlines under mutmut."""

from hypothesis import settings

settings.register_profile("mutation", deadline=None)
settings.load_profile("mutation")
EOF

if [ -n "${MUTATION_ONLY:-}" ]; then
    touch "$work/.mutation-only"
fi

cd "$work"
start=$(date +%s)
# PYTHONPATH unset: the mutated copy (mutants/) must be what the tests import.
if ! env -u PYTHONPATH nice -n 15 mutmut run --max-children "${MUTATION_CHILDREN:-1}" \
    "${rerun[@]}" </dev/null >mutmut-run.log 2>&1; then
    tr '\r' '\n' <mutmut-run.log | tail -40 >&2
    echo "mutmut run failed; its output is in $work/mutmut-run.log" >&2
    exit 1
fi
elapsed=$(($(date +%s) - start))
env -u PYTHONPATH mutmut export-cicd-stats >/dev/null
echo "survivors (mutmut show NAME, in $work):"
env -u PYTHONPATH mutmut results | grep -v ': killed$' || true
python - "$module" "$elapsed" "${tests[*]}" "$base_killed" "${#rerun[@]}" "${MUTATION_ONLY:-}" <<'EOF'
import json
import sys

module, elapsed, tests, base_killed, reran, only = sys.argv[1:]
s = json.load(open("mutants/mutmut-cicd-stats.json", encoding="utf-8"))
total = s["total"] - s["skipped"]
killed, timeout = s["killed"], s["timeout"]
if only:
    print(
        f"router/_{module}.py: of the {reran} mutants named in {only}: {killed} killed, "
        f"{timeout} timeout, {s['survived']} survived, {s['no_tests']} no tests; "
        f"{elapsed} s; tests: {tests}"
    )
    sys.exit()
if int(reran):
    # This session ran only those mutants; every other one was killed last time.
    print(f"reran the {reran} mutants the last session did not kill ({base_killed} it did)")
    killed += int(base_killed)
print(
    f"router/_{module}.py: {killed} killed + {timeout} timeout of {total} "
    f"({s['survived']} survived, {s['no_tests']} no tests, {s['suspicious']} suspicious); "
    f"killed {100 * killed / total:.1f}%, killed or timeout {100 * (killed + timeout) / total:.1f}%; "
    f"{elapsed} s; tests: {tests}"
)
EOF
