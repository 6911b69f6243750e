#!/usr/bin/env bash
# Set up hybrids for development and CI on a fresh Debian machine: system packages (ffmpeg), a
# virtual environment in .venv holding exactly the versions in requirements.lock (every file
# checked against its sha256; torch's CPU build included), and hybrids itself in editable mode.
#
#   bash scripts/setup.sh             install from the lock (what CI runs)
#   bash scripts/setup.sh --upgrade   resolve the newest versions pyproject.toml allows, rewrite
#                                     requirements.lock, install it; then run the tests and commit
#   bash scripts/setup.sh --relock    after adding or removing a dependency in pyproject.toml:
#                                     rewrite the lock keeping every other locked version
#
# Environment overrides:
#   PYTHON       interpreter for the venv (default python3)
#   VENV         where the venv goes (default .venv)
#   TORCH_INDEX  an extra pip index holding torch==2.13.0+cpu, for machines without a local copy
#                of that wheel (e.g. https://download.pytorch.org/whl/cpu)
#   TORCH_SPEC   install this torch instead of the locked CPU build (e.g. a CUDA build on a GPU
#                machine); every other package still comes from the lock
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
LOCK=requirements.lock
UV_VERSION=0.13.10  # the resolver used by --upgrade (a dev tool; never imported)

relock=0
UPGRADE=()
case "${1:-}" in
    "") ;;
    --upgrade) relock=1; UPGRADE=(--upgrade) ;;
    --relock) relock=1 ;;
    -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup: unknown option $1 (use --upgrade, --relock or --help)" >&2; exit 2 ;;
esac

# ffmpeg: decoding compressed audio (MUSDB .stem.mp4, mp3 output); museval's stempeg needs it.
if ! command -v ffmpeg >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    if command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing ffmpeg with apt-get"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null
    else
        echo "setup: warning: ffmpeg is missing and apt-get is not available; install ffmpeg yourself" >&2
    fi
fi

"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
INDEX_ARGS=()
[ -z "${TORCH_INDEX:-}" ] || INDEX_ARGS=(--extra-index-url "$TORCH_INDEX")

if [ "$relock" -eq 1 ]; then
    "${PIP[@]}" install -q "uv==$UV_VERSION"
    FIND_LINKS=()
    # This machine's pip finds torch's CPU wheel through its find-links folder; uv must be told.
    for folder in $("${PIP[@]}" config get global.find-links 2>/dev/null || true); do
        [ -d "$folder" ] && FIND_LINKS+=(--find-links "$folder")
    done
    [ -z "${TORCH_INDEX:-}" ] || FIND_LINKS+=(--extra-index-url "$TORCH_INDEX" --index-strategy unsafe-best-match)
    "$VENV/bin/uv" pip compile pyproject.toml --extra dev scripts/setup-tools.in \
        --override scripts/torch-override.txt "${UPGRADE[@]}" --generate-hashes \
        --python-version 3.11 --python-platform x86_64-manylinux_2_28 "${FIND_LINKS[@]}" \
        --custom-compile-command "bash scripts/setup.sh ${1}" -o "$LOCK"
    echo "setup: rewrote $LOCK; run the tests, then commit it"
fi

# The lock holds pip, setuptools and wheel too: install them first (hash-checked), so that the
# editable build below uses the locked setuptools rather than whatever is newest today.
if [ -n "${TORCH_SPEC:-}" ]; then
    # Drop the locked torch (its line and its hash lines) and install the requested build instead.
    locked=$(mktemp)
    trap 'rm -f "$locked"' EXIT
    awk '/^torch==/ {skip=1; next} skip && /^[[:space:]]/ {next} {skip=0; print}' "$LOCK" > "$locked"
    "${PIP[@]}" install -q "${INDEX_ARGS[@]}" "$TORCH_SPEC"
else
    locked=$LOCK
fi
"${PIP[@]}" install -q --require-hashes --no-deps "${INDEX_ARGS[@]}" -r "$locked"
"${PIP[@]}" check
# The locked setuptools builds the editable install; its many layout warnings are shown only on failure.
if ! build_log=$("${PIP[@]}" install -q --no-deps --no-build-isolation -e . 2>&1); then
    echo "$build_log" >&2
    exit 1
fi
"$VENV/bin/python" -c "import torch, hybrids.apps; print('setup: hybrids', hybrids.apps.__version__, 'with torch', torch.__version__)"
