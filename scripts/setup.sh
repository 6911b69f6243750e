#!/usr/bin/env bash
# Set up everything hybrids needs for development and CI on a fresh Debian machine:
#   system packages (ffmpeg), a virtual environment in .venv, the CPU build of torch,
#   and hybrids in editable mode with its dev extras.
# Environment overrides: PYTHON (default python3), VENV (default .venv),
#   TORCH_SPEC (default torch==2.13.0; e.g. a CUDA build on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

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
"${PIP[@]}" install -q --upgrade pip "setuptools>=77" wheel
# torch first and pinned: an unpinned torch pulled in by a dependency would be a multi-GB CUDA build.
"${PIP[@]}" install -q "$TORCH_SPEC"
"${PIP[@]}" install -q -e ".[dev]"
"$VENV/bin/python" -c "import torch, hybrids.apps; print('setup: hybrids', hybrids.apps.__version__, 'with torch', torch.__version__)"
