#!/usr/bin/env bash
# Set up everything oncolake needs, once; a quick no-op when it is already there.
#
#   scripts/bootstrap.sh          # .venv with the pinned stack, patched Horovod, Delta jars (make demo)
#   scripts/bootstrap.sh --test   # the same, plus Chromium, its driver and Label Studio (make test)
#
# - the virtual environment in .venv (Python 3.11), installed with constraints.txt, dev tools included
#   (pytest, ruff, mypy, import-linter, pre-commit, stubs);
# - Horovod 0.28.1 built for the pinned torch (scripts/build-horovod.sh), its wheel cached in
#   ~/.cache/oncolake so a warm machine never rebuilds it;
# - Java 17, cmake and g++ from Debian's packages when missing and we are root; with --test also
#   Debian's chromium and chromium-driver (only the registry browser test needs a browser) and postgresql
#   (the multi-user MLflow server test starts a throwaway server);
# - Delta's jars resolved once from Maven Central into ~/.cache/oncolake (oncolake doctor --spark);
# - with --test, Label Studio in a virtual environment of its own, .venv-labelstudio (stamped with its pin).
# A stamp in .venv records a hash of what is installed from: pyproject.toml's dependency lists (runtime,
# dev, build system), constraints.txt and the Horovod build script. When none changed and the checks
# pass (the stack imports, the dev tools are there), nothing is reinstalled.
set -euo pipefail
cd "$(dirname "$0")/.."

for_tests=
for arg in "$@"; do
  case $arg in
    --test) for_tests=1 ;;
    *) printf 'usage: %s [--test]\n' "$0" >&2; exit 2 ;;
  esac
done

say() { printf 'bootstrap: %s\n' "$*" >&2; }

need_debian() {  # need_debian COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 && return 0
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    say "installing $2 (for $1)"
    [[ -n "${_apt_updated:-}" ]] || { apt-get update -qq >&2; _apt_updated=1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >&2
  else
    say "$1 is missing: install $2"; exit 1
  fi
}

need_debian java openjdk-17-jre-headless
need_debian cmake cmake
need_debian g++ g++
want_debian() {  # like need_debian, but a non-root machine only hears about it (tests that need it skip)
  command -v "$1" >/dev/null 2>&1 && return 0
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then need_debian "$1" "$2"
  else say "$1 is missing (the registry browser test skips): install $2"; fi
}
if [[ -n $for_tests ]]; then
  want_debian chromium chromium                 # headless browser for tests/model/test_registry_browser.py
  want_debian chromedriver chromium-driver
  # PostgreSQL's server for tests/model/test_server_postgres.py (Debian keeps initdb off PATH).
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || want_debian initdb postgresql
fi

PYTHON=${PYTHON:-$(command -v python3.11 || true)}
[[ -n "$PYTHON" ]] || { say "Python 3.11 is required (python3.11 not found)"; exit 1; }

if [[ -n $for_tests ]]; then
  # Label Studio for tests/pipelines/test_label_studio.py, which starts a real server. It gets a virtual
  # environment of its own: it pulls about 160 packages, numpy 2 and pandas 3 among them, which .venv
  # cannot hold (pyarrow 14 and petastorm need numpy 1). The tests talk to it over HTTP only.
  LABEL_STUDIO=label-studio==1.23.2
  LS_VENV=.venv-labelstudio
  # A fresh server spends ~45 s migrating its SQLite database; the tests copy this one, migrated once.
  ls_template=$LS_VENV/migrated.sqlite3
  if [[ ! -f $LS_VENV/.oncolake-stamp || "$(cat $LS_VENV/.oncolake-stamp)" != "$LABEL_STUDIO" ]] \
    || [[ ! -x $LS_VENV/bin/label-studio || ! -f $ls_template ]]; then
    say "installing $LABEL_STUDIO in $LS_VENV (first time: about 2 minutes, 1 GB)"
    rm -rf $LS_VENV
    "$PYTHON" -m venv $LS_VENV
    $LS_VENV/bin/python -m pip install --quiet --disable-pip-version-check "$LABEL_STUDIO" >&2
    ls_data=$(mktemp -d)
    # `label-studio version` applies the migrations to a new data dir (no user, no network) and exits.
    LABEL_STUDIO_BASE_DATA_DIR=$ls_data LABEL_STUDIO_LATEST_VERSION_CHECK=false \
      LABEL_STUDIO_COLLECT_ANALYTICS=false LABEL_STUDIO_SENTRY_DSN= \
      $LS_VENV/bin/label-studio version >"$ls_data/log" 2>&1 || { cat "$ls_data/log" >&2; exit 1; }
    cp "$ls_data/label_studio.sqlite3" $ls_template
    rm -rf "$ls_data"
    echo "$LABEL_STUDIO" > $LS_VENV/.oncolake-stamp
  fi
fi

VENV=.venv
# The dependency lists only: editing a tool's settings in pyproject.toml reinstalls nothing.
requirements=$("$PYTHON" - <<'PY'
import json, tomllib
with open("pyproject.toml", "rb") as f:
    data = tomllib.load(f)
project = data["project"]
print(json.dumps([data["build-system"], project["dependencies"], project.get("optional-dependencies")]))
PY
)
stamp_value=$({ echo "$requirements"; cat constraints.txt scripts/build-horovod.sh; } | sha256sum | cut -d' ' -f1)
dev_tools=(pytest ruff mypy lint-imports pre-commit)
installed() {
  local tool
  for tool in "${dev_tools[@]}"; do [[ -x $VENV/bin/$tool ]] || return 1; done
  # Horovod's compiled torch extension is imported for real (it breaks when torch changes); the rest is
  # only looked up, which is much quicker than importing MLflow and Petastorm.
  $VENV/bin/python -c 'import importlib.util as u, horovod.torch
assert all(u.find_spec(m) for m in ("delta", "petastorm", "mlflow", "tqdm", "selenium", "crowdkit"))' 2>/dev/null
}
if [[ -f $VENV/.oncolake-stamp && "$(cat $VENV/.oncolake-stamp)" == "$stamp_value" ]] && installed; then
  exit 0
fi

[[ -x $VENV/bin/python ]] || { say "creating $VENV"; "$PYTHON" -m venv $VENV; }
PIP=($VENV/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt)
say "installing the pinned stack (first time: a few minutes, torch is large)"
"${PIP[@]}" pip setuptools wheel
# torch first: Horovod's build compiles against it.
"${PIP[@]}" torch numpy cloudpickle psutil pyyaml packaging cffi
wheel=$(scripts/build-horovod.sh $VENV/bin/python)
"${PIP[@]}" "$wheel" -e ".[dev]"
# crowd-kit, the reference the tests hold the Spark Dawid-Skene to: it declares transformers (and so a
# second torch stack) but its aggregation code imports only nltk and regex beyond what is here.
"${PIP[@]}" --no-deps crowd-kit nltk regex

# A package that silently upgrades numpy breaks pyarrow 14 and petastorm: refuse to go on.
$VENV/bin/python - <<'PY'
import importlib.metadata as m
numpy, arrow = m.version("numpy"), m.version("pyarrow")
assert numpy.startswith("1."), f"numpy {numpy} was installed: pyarrow 14 / petastorm need numpy<2"
assert arrow == "14.0.2", f"pyarrow {arrow} was installed: petastorm 0.13.1 needs 14.0.2"
PY
say "checking the stack and caching Delta's jars"
$VENV/bin/oncolake doctor --spark --config tiny >&2
echo "$stamp_value" > $VENV/.oncolake-stamp
