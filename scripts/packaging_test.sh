#!/usr/bin/env bash
# Packaging test: what a user of `pip install .` gets. Builds the wheel, installs it (not editable) into a
# fresh virtual environment, and from a directory outside the repository runs `eos-probe --help`, every
# verb's --help, and a 5-step `train` on the embedded data (which must be found in the install, not in the
# checkout). Exits non-zero on the first failure; prints its wall time.
#
#   scripts/packaging_test.sh [PYTHON]   (PYTHON: an interpreter with setuptools to build with; default python3)
set -euo pipefail
t_start=$(date +%s)
repo="$(cd "$(dirname "$0")/.." && pwd)"
py="${1:-python3}"
work="$(mktemp -d "${TMPDIR:-/tmp}/eos-probe-packaging.XXXXXX")"
trap 'rm -rf "$work"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1 MPLBACKEND=Agg

echo "packaging test: building the wheel"
# from a copy of what the wheel is made of: a build must not leave build/ or *.egg-info in the checkout
mkdir -p "$work/src"
cp -r "$repo/eos_probe" "$repo/data" "$repo/setup.cfg" "$repo/pyproject.toml" "$repo/README.md" "$work/src/"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
"$py" -m pip wheel -q --no-deps --no-build-isolation -w "$work/dist" "$work/src"
wheel=$(ls "$work"/dist/eos_probe-*.whl)

echo "packaging test: installing $(basename "$wheel") into a fresh venv"
python3 -m venv "$work/venv"
# CPU torch wheel first: a bare `torch` requirement would pull a multi-GB CUDA build
"$work/venv/bin/pip" install -q torch==2.13.0
"$work/venv/bin/pip" install -q "$wheel"

outside="$work/elsewhere"
mkdir -p "$outside"
cd "$outside"
bin="$work/venv/bin"
fail() { echo "packaging test FAILED: $*" >&2; exit 1; }
run() {  # run a command; fail on a non-zero exit or a traceback
    local out rc=0
    out=$("$@" 2>&1) || rc=$?
    if [ "$rc" -ne 0 ] || grep -q "Traceback" <<<"$out"; then
        echo "$out" | tail -20 >&2
        fail "'$*' exited $rc"
    fi
}
# the package comes from the venv, not from the checkout
"$bin/python" - "$repo" <<'EOF' || fail "eos_probe is imported from the checkout"
import sys, eos_probe
assert not eos_probe.__file__.startswith(sys.argv[1]), eos_probe.__file__
print("  eos_probe", eos_probe.__version__, "from", eos_probe.__file__)
EOF
run "$bin/eos-probe" --help
run "$bin/eos-probe" --version
verbs=$("$bin/python" -c "from eos_probe.cli import COMMANDS; print(' '.join(COMMANDS))")
for verb in $verbs; do
    run "$bin/eos-probe" "$verb" --help
done
echo "  --help of: $verbs"
# the embedded data set is found in the install (<prefix>/share/eos-probe), not in the repository
"$bin/python" - <<'EOF' || fail "embedded data not found in the installed package"
import sys
from eos_probe.data.fashion import embedded_path
p = embedded_path()
assert str(p).startswith(sys.prefix), p
print("  embedded data:", p)
EOF
run "$bin/eos-probe" train --model cnn --model-arg "widths=[4,8]" --model-arg hidden=16 --n-per-class 20 \
    --steps 5 --probe lambda_max --probe-every 5 --out run.h5 --quiet
run "$bin/eos-probe" inspect run.h5
"$bin/python" -c "import h5py; f = h5py.File('run.h5', 'r'); assert f.attrs['status'] == 'finished' and f['train/step'][-1] == 5, dict(f.attrs)" \
    || fail "the 5-step run file is not a finished run"
echo "packaging test passed in $(( $(date +%s) - t_start )) s"
