#!/usr/bin/env bash
# Developer entry point: creates .venv on first use, installs the project, then runs a task.
#   ./dev.sh demo [ARGS...]   run the end-to-end demo (real servers on 127.0.0.1)
#   ./dev.sh test [ARGS...]   run the test suite (extra arguments go to pytest)
#   ./dev.sh lint             run ruff, mypy and a strict build of the docs site
#   ./dev.sh bench [ARGS...]  run the in-process benchmark
set -euo pipefail
cd "$(dirname "$0")"

venv=.venv
python=${PYTHON:-python3}
stamp=$venv/.installed

install() {
    if [[ ! -x $venv/bin/python ]]; then
        "$python" -m venv "$venv"
    fi
    # Reinstall when the project metadata changes, so a pull that adds a dependency just works.
    if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
        "$venv/bin/python" -m pip install --quiet --upgrade pip
        "$venv/bin/python" -m pip install --quiet -e ".[dev]"
        touch "$stamp"
    fi
}

task=${1:-}
shift || true
case $task in
    demo)
        install
        exec "$venv/bin/zerotrust" demo "$@"
        ;;
    test)
        install
        set +e
        "$venv/bin/python" -m pytest "$@"
        status=$?
        set -e
        if [[ $status -eq 5 ]]; then
            echo "pytest collected no tests: treating this as a failure" >&2
            exit 1
        fi
        exit $status
        ;;
    lint)
        install
        "$venv/bin/ruff" check zerotrust tests benchmarks examples tools
        "$venv/bin/ruff" format --check zerotrust tests benchmarks examples tools
        "$venv/bin/mypy"
        # The docs site must build without a warning; the output is thrown away.
        site_dir=$(mktemp -d)
        trap 'rm -rf "$site_dir"' EXIT
        NO_MKDOCS_2_WARNING=1 "$venv/bin/mkdocs" build --strict --quiet --site-dir "$site_dir"
        ;;
    bench)
        install
        exec "$venv/bin/python" benchmarks/bench_inprocess.py "$@"
        ;;
    *)
        echo "usage: ./dev.sh {demo|test|lint|bench} [ARGS...]" >&2
        exit 2
        ;;
esac
