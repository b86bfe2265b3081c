#!/usr/bin/env bash
# Idempotent setup for mlassets. Safe to run on every call: each step checks what is
# already there and does only what is missing.
#
#   scripts/bootstrap.sh            virtualenv + TensorFlow + Horovod + the package
#   scripts/bootstrap.sh --tests    ... plus test tools, Azurite (npm), Chromium (Debian)
#
# Order matters: Horovod compiles against the TensorFlow that is installed, so TensorFlow
# goes in first and is pinned exactly; the built Horovod wheel is cached per TensorFlow
# version so a fresh virtualenv on the same machine reuses it instead of recompiling.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MLASSETS_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3.11}
TF_VERSION=2.17.1
TF_KERAS_VERSION=2.17.0
HOROVOD_VERSION=0.28.1
CACHE=${MLASSETS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mlassets}
WHEELS=$CACHE/wheels/horovod-$HOROVOD_VERSION-tf-$TF_VERSION
WITH_TESTS=0
[ "${1:-}" = "--tests" ] && WITH_TESTS=1

say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "mlassets needs Python 3.11 ($PYTHON not found; set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
# pip, minus one warning some machines' global pip config (extra indexes that do not hold a
# package) prints for every package; everything else pip says goes through.
pip_() {
  "$PY" -m pip --disable-pip-version-check -q "$@" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
PIP=(pip_)
CONSTRAINTS=(-c "$ROOT/constraints.txt")

if ! "$PY" -c "import setuptools, wheel, cmake" >/dev/null 2>&1; then
  say "installing build tools"
  "${PIP[@]}" install -U pip "setuptools<70" wheel "cmake<4"
fi

if [ "$("$PY" -c 'import importlib.metadata as m; print(m.version("tensorflow"))' 2>/dev/null)" != "$TF_VERSION" ]; then
  say "installing TensorFlow $TF_VERSION (first run only)"
  "${PIP[@]}" install "${CONSTRAINTS[@]}" "tensorflow==$TF_VERSION" "tf-keras==$TF_KERAS_VERSION" "numpy<2"
fi

if ! "$PY" -c "import horovod.tensorflow" >/dev/null 2>&1; then
  if ! ls "$WHEELS"/horovod-"$HOROVOD_VERSION"-*.whl >/dev/null 2>&1; then
    say "building Horovod $HOROVOD_VERSION against TensorFlow $TF_VERSION with Gloo (5-8 minutes, once per machine)"
    mkdir -p "$WHEELS"
    (
      export HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
        HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
      "${PIP[@]}" wheel --no-deps --no-build-isolation "horovod==$HOROVOD_VERSION" -w "$WHEELS"
    )
  fi
  say "installing Horovod from $WHEELS"
  "${PIP[@]}" install "${CONSTRAINTS[@]}" "$WHEELS"/horovod-"$HOROVOD_VERSION"-*.whl
  "$PY" -c "import horovod.tensorflow" || { echo "Horovod was installed but does not import" >&2; exit 1; }
fi

# Reinstall the package only when its dependency list (or this script) changed.
stamp="$VENV/.mlassets-installed"
want=$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" "$0" | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing mlassets and its dependencies"
  "${PIP[@]}" install "${CONSTRAINTS[@]}" -e "$ROOT[dev]"
  echo "$want" >"$stamp"
fi

if [ "$WITH_TESTS" = 1 ]; then
  if [ ! -x "$ROOT/node_modules/.bin/azurite-blob" ]; then
    command -v npm >/dev/null 2>&1 || { echo "the tests need npm (Node.js) for Azurite" >&2; exit 1; }
    say "installing Azurite from npm"
    (cd "$ROOT" && npm ci --no-audit --no-fund --loglevel=error)
  fi
  # The UI tests drive a real browser: Debian's Chromium with its matching ChromeDriver.
  if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
      say "installing Chromium and ChromeDriver from Debian (UI tests)"
      sudo_=(); [ "$(id -u)" = 0 ] || sudo_=(sudo)
      "${sudo_[@]}" apt-get update -qq
      "${sudo_[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        chromium chromium-driver >/dev/null
    else
      say "no apt-get: install Chromium and ChromeDriver yourself, or the UI tests are skipped"
    fi
  fi
fi
