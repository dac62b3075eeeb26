#!/usr/bin/env bash
# Mutation testing of one of the modules that decide (docs/testing.md, "Mutation testing").
# Not part of CI: run it by hand after `pip install '.[test,mutation]'`.
#
#   benchmarks/mutation.sh MODULE [TEST_FILE ...]
#
# MODULE is policy, limiter, health, race or budget: router/_MODULE.py is mutated, and
# each mutant is run against the test files given, by default tests/test_MODULE.py plus
# tests/test_mutation_MODULE.py when it exists.  mutmut runs in a scratch copy of the
# working tree (tracked and untracked, not ignored, files), .mutation/MODULE/, so the
# working tree is never mutated and two modules can run side by side; every run starts
# afresh.  Afterwards, in that directory: `mutmut results` lists the survivors,
# `mutmut show NAME` shows one.  The last line printed is the score.
set -euo pipefail

usage="usage: benchmarks/mutation.sh {policy|limiter|health|race|budget} [TEST_FILE ...]"
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
rm -rf "$work"
mkdir -p "$work"
git ls-files -z --cached --others --exclude-standard \
    | xargs -0 -I{} sh -c 'test -e "$1" && printf "%s\0" "$1"' _ {} \
    | tar --null -T - -cf - | tar -xf - -C "$work"

# The session's configuration: one module, its tests; appended to the copy's pyproject.
python - "$work/pyproject.toml" "router/_$module.py" "${tests[@]}" <<'EOF'
import json
import sys

path, source, *tests = sys.argv[1:]
with open(path, "a", encoding="utf-8") as f:
    f.write(
        "\n[tool.mutmut]\n"
        'source_paths = ["router/"]\n'
        f"only_mutate = [{json.dumps(source)}]\n"
        'also_copy = ["providers/", "tests/", "docs/", "README.md"]\n'
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q"]\n'
        # A mutant gets 15 times the test's clean run time plus 5 s before it counts
        # as a timeout (a loop that never ends); the machine may be loaded.
        "timeout_multiplier = 15.0\n"
        "timeout_constant = 5.0\n"
    )
EOF

cd "$work"
start=$(date +%s)
# PYTHONPATH unset: the mutated copy (mutants/) must be what the tests import.
if ! env -u PYTHONPATH nice -n 15 mutmut run --max-children "${MUTATION_CHILDREN:-1}" \
    </dev/null >mutmut-run.log 2>&1; then
    tr '\r' '\n' <mutmut-run.log | tail -40 >&2
    echo "mutmut run failed; its output is in $work/mutmut-run.log" >&2
    exit 1
fi
elapsed=$(($(date +%s) - start))
env -u PYTHONPATH mutmut export-cicd-stats >/dev/null
echo "survivors (mutmut show NAME, in $work):"
env -u PYTHONPATH mutmut results | grep -v ': killed$' || true
python - "$module" "$elapsed" "${tests[*]}" <<'EOF'
import json
import sys

module, elapsed, tests = sys.argv[1:]
s = json.load(open("mutants/mutmut-cicd-stats.json", encoding="utf-8"))
total = s["total"] - s["skipped"]
killed, timeout = s["killed"], s["timeout"]
print(
    f"router/_{module}.py: {killed} killed + {timeout} timeout of {total} "
    f"({s['survived']} survived, {s['no_tests']} no tests, {s['suspicious']} suspicious); "
    f"killed {100 * killed / total:.1f}%, killed or timeout {100 * (killed + timeout) / total:.1f}%; "
    f"{elapsed} s; tests: {tests}"
)
EOF
