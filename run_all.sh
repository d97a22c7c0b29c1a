#!/usr/bin/env bash
# MedXpert: one command for the whole chain, the tests, the dashboard and sweeps.
#
#   ./run_all.sh [PARAMS] [--run NAME] [--from NN] [--only NN ...] [--until NN] [--set KEY=VALUE ...] [--parallel N]
#                [--force [NN ...]]     (stages up to date are skipped; --force redoes all, --force NN that one)
#   ./run_all.sh --status [PARAMS] [--run NAME] [--set KEY=VALUE ...] [--json]
#   ./run_all.sh --test [PYTEST ARGS ...]
#   ./run_all.sh --dashboard [--run NAME] [--port N] [--set dashboard.KEY=VALUE ...]   (pool, max_sessions, ...)
#   ./run_all.sh --sweep params/sweeps/NAME.yaml [--until NN] [--parallel N]
#
# Sets up what it needs: when this Python lacks the dependencies it creates .venv and installs them from the
# lock, requirements/cpu.lock (exact versions with hashes; torch is its CPU build, never a multi-GB CUDA build);
# when they are importable it installs nothing (run.json records where the environment differs from the lock).
set -euo pipefail
# On a shared CPU, spinning OpenMP threads slow every torch step several-fold; yield instead.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT=$(pwd)

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }

MODE=chain
PARAMS=""
CHAIN_ARGS=()
STATUS_ARGS=()
EXTRA=()
RUN=""
PORT=""
SWEEP=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --test) MODE=test; shift; EXTRA=("$@"); break ;;
    --dashboard) MODE=dashboard; shift ;;
    --sweep) MODE=sweep; SWEEP="${2:?--sweep needs a sweep YAML, e.g. params/sweeps/demo_grid.yaml}"; shift 2 ;;
    --run) RUN="${2:?--run needs a run name or path}"; shift 2 ;;
    --port) PORT="${2:?--port needs a number}"; shift 2 ;;
    --from|--until|--parallel) CHAIN_ARGS+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
    --set) CHAIN_ARGS+=("$1" "${2:?--set needs KEY=VALUE}"); shift 2 ;;
    --only) shift; ONLY=(); while [ $# -gt 0 ] && [[ "$1" != --* ]]; do ONLY+=("$1"); shift; done
            [ ${#ONLY[@]} -gt 0 ] || { echo "run_all.sh: --only needs notebook numbers, e.g. --only 02 03" >&2; exit 2; }
            CHAIN_ARGS+=(--only "${ONLY[@]}") ;;
    --force) shift; FORCE=(); while [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; do FORCE+=("$1"); shift; done
             CHAIN_ARGS+=(--force ${FORCE[@]+"${FORCE[@]}"}) ;;
    --status) MODE=status; shift ;;
    --json) STATUS_ARGS+=(--json); shift ;;
    --*) echo "run_all.sh: unknown option $1 (see ./run_all.sh --help)" >&2; exit 2 ;;
    *) if [ -z "$PARAMS" ]; then PARAMS="$1"; shift; else echo "run_all.sh: unexpected argument $1" >&2; exit 2; fi ;;
  esac
done

# --- environment -------------------------------------------------------------------------------
# Whether the dependencies are installed is asked without importing them (importing torch and transformers alone
# takes seconds, and a rerun with every stage up to date should take about that long in all).
CHECK_MODULES='torch transformers tokenizers datasets faiss pandas pyarrow PIL pydicom seaborn sklearn scipy sacrebleu
rouge_score simple_icd_10_cm google.genai papermill nbformat ipykernel ipywidgets voila accelerate pydantic yaml tqdm av
pocketsphinx anywidget jiwer filelock onnxruntime onnx moonshine_cpp'
TEST_MODULES='pytest playwright.sync_api importlinter ruff mypy'

have_deps() {
  "$1" -c 'import importlib.util as u, sys
sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))' $CHECK_MODULES ${2:-} >/dev/null 2>&1
}

pick_python() {
  local candidates=()
  [ -n "${PYTHON:-}" ] && candidates+=("$PYTHON")
  [ -x "$ROOT/.venv/bin/python" ] && candidates+=("$ROOT/.venv/bin/python")
  candidates+=(python3 python)
  local extra=""
  [ "$MODE" = test ] && extra="$TEST_MODULES"
  for py in "${candidates[@]}"; do
    if command -v "$py" >/dev/null 2>&1 && have_deps "$py" "$extra"; then echo "$py"; return 0; fi
  done
  return 1
}

bootstrap_venv() {
  local base="${PYTHON:-python3}"
  echo "run_all.sh: dependencies missing - creating .venv and installing them from requirements/cpu.lock (one time)" >&2
  [ -x .venv/bin/python ] || "$base" -m venv .venv
  local lock="${MEDXPERT_LOCK:-requirements/cpu.lock}" links="${PIP_FIND_LINKS:-/opt/wheels}" find=()
  [ -d "$links" ] && find=(--find-links "$links")  # where torch's CPU wheel lies on disk, if it does
  # Exact versions with hashes (torch is its CPU build), installed by uv (itself pinned with hashes: ~10x faster
  # than pip); pip installs the same lock where uv cannot. Then this checkout, without resolving anything else.
  # Bytecode is compiled at install, as pip does (uv does not by default): where PYTHONDONTWRITEBYTECODE is set,
  # every kernel would otherwise compile torch and transformers again (imports twice as slow).
  if .venv/bin/python -m pip install -q --require-hashes -r requirements/bootstrap.txt >&2 \
     && .venv/bin/python -m uv pip install -q --python .venv/bin/python --require-hashes --compile-bytecode "${find[@]}" -r "$lock" >&2; then
    :
  else
    echo "run_all.sh: uv could not install the lock - installing it with pip (slower)" >&2
    .venv/bin/python -m pip install -q --upgrade pip >&2
    .venv/bin/python -m pip install -q --require-hashes -r "$lock" >&2
  fi
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e . >&2
  echo "$ROOT/.venv/bin/python"
}

PY=$(pick_python) || PY=$(bootstrap_venv)
# The package must be this checkout's (a clone elsewhere must not import another checkout's code).
if ! "$PY" -c "import medxpert_utils, pathlib, sys; sys.exit(0 if pathlib.Path(medxpert_utils.__file__).resolve().parent.parent == pathlib.Path('$ROOT').resolve() else 1)" >/dev/null 2>&1; then
  echo "run_all.sh: installing this checkout's medxpert_utils (editable, no dependencies)" >&2
  "$PY" -m pip install --no-deps --no-build-isolation -q -e . >&2 || "$PY" -m pip install --no-deps -q -e . >&2
fi

# --- modes -------------------------------------------------------------------------------------
case "$MODE" in
  test)
    if [ ! -x /usr/bin/chromium ]; then
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "run_all.sh: installing Debian's chromium for the dashboard browser test" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >&2
      else
        echo "run_all.sh: /usr/bin/chromium is missing - install Debian's chromium (apt-get install chromium) for the browser test" >&2
      fi
    fi
    if ! command -v espeak-ng >/dev/null 2>&1; then
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "run_all.sh: installing Debian's espeak-ng for the spoken-query tests" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng) >&2
      else
        echo "run_all.sh: espeak-ng is missing - install Debian's espeak-ng (apt-get install espeak-ng) for the spoken-query tests" >&2
      fi
    fi
    exec "$PY" -m pytest "${EXTRA[@]}"
    ;;
  dashboard)
    exec "$PY" -m medxpert_utils.app.dashboard ${RUN:+--run "$RUN"} ${PORT:+--port "$PORT"} ${CHAIN_ARGS[@]+"${CHAIN_ARGS[@]}"}
    ;;
  sweep)
    exec "$PY" -m medxpert_utils sweep "$SWEEP" "${CHAIN_ARGS[@]}"
    ;;
  status)
    exec "$PY" -m medxpert_utils status "${PARAMS:-params/demo.yaml}" ${RUN:+--run "$RUN"} ${CHAIN_ARGS[@]+"${CHAIN_ARGS[@]}"} \
      ${STATUS_ARGS[@]+"${STATUS_ARGS[@]}"}
    ;;
  chain)
    exec "$PY" -m medxpert_utils run "${PARAMS:-params/demo.yaml}" ${RUN:+--run "$RUN"} ${CHAIN_ARGS[@]+"${CHAIN_ARGS[@]}"}
    ;;
esac
