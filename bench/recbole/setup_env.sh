#!/usr/bin/env bash
# Isolated environment for the RecBole 1.2.0 side of the sequential peer benchmark
# (bench/recbole/run_recbole.py). recsmith is NOT installed into it.
#
#   bash bench/recbole/setup_env.sh            # venv at $RECBOLE_VENV or <repo>/.venv-recbole
#   RECBOLE_VENV=/some/dir PYTHON=python3.11 bash bench/recbole/setup_env.sh
#
# Idempotent: an existing venv is reused, and packages already at their pins are left
# alone (pip is only called when something is missing or at another version).
#
# What goes in, and why:
#   torch==2.13.0        the CPU wheel on this machine's disk (/opt/wheels). Every pip
#                        call below passes a constraint pinning torch, so nothing can make
#                        pip resolve another (multi-GB CUDA) torch.
#   recbole==1.2.0       installed with --no-deps: its declared dependencies include
#                        tensorboard, thop, plotly, tabulate (and ray/hyperopt extras), which a
#                        sequential train + full-sort eval does not need.
#   numpy==1.23.5        RecBole 1.2 uses aliases removed in numpy 1.24 (np.float, np.bool...).
#   pandas==1.5.3        last pandas 1.x (built for numpy 1.x; RecBole 1.2 predates pandas 2).
#   scipy==1.10.1, scikit-learn==1.2.2 (+joblib, threadpoolctl): imported at module level
#                        by recbole.data / recbole.evaluator.metrics.
#   tqdm, pyyaml, texttable, colorlog==4.7.2, colorama==0.4.4: imported at module level
#                        (the last two pinned exactly as RecBole pins them).
# Not installed, stubbed by run_recbole.py instead (see its `_install_stubs`):
#   ray                  `recbole.quick_start` does `from ray import tune` at import time
#                        and `import recbole` imports quick_start; tune is only used by the
#                        hyper-parameter search path we never call.
#   tensorboard          `recbole.utils.utils` does `from torch.utils.tensorboard import
#                        SummaryWriter` at import time; the Trainer builds one, but only its
#                        `fit()` writes to it, and the runner drives epochs itself.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${RECBOLE_VENV:-$repo/.venv-recbole}"
python="${PYTHON:-python3}"

pins=(
  "torch==2.13.0"
  "numpy==1.23.5"
  "pandas==1.5.3"
  "python-dateutil==2.9.0.post0"
  "pytz==2024.2"
  "six==1.16.0"
  "scipy==1.10.1"
  "scikit-learn==1.2.2"
  "joblib==1.3.2"
  "threadpoolctl==3.5.0"
  "tqdm==4.66.5"
  "pyyaml==6.0.2"
  "texttable==1.7.0"
  "colorlog==4.7.2"
  "colorama==0.4.4"
)
recbole_pin="recbole==1.2.0"

log() { echo "[setup_env] $*"; }
# pip, minus the harmless "Location 'file:///opt/pypi.../' is ignored" warnings of this
# machine's pip.conf; pip's own exit status is kept.
pip_q() {
  "$vpy" -m pip "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  return "${PIPESTATUS[0]}"
}

if [[ -x "$venv/bin/python" ]]; then
  log "venv exists: $venv ($("$venv/bin/python" -V 2>&1))"
else
  log "creating venv $venv with $("$python" -V 2>&1) ($(command -v "$python"))"
  "$python" -m venv "$venv"
fi
vpy="$venv/bin/python"

# Which pins are missing or at another version? (importlib.metadata, no pip call)
missing="$("$vpy" - "${pins[@]}" "$recbole_pin" <<'EOF'
import sys
from importlib import metadata
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        have = None
    # torch reports "2.13.0+cpu" for the pin "2.13.0"
    if have is None or have.split("+")[0] != want:
        print(pin)
EOF
)"

if [[ -z "$missing" ]]; then
  log "all pins already installed; nothing to install"
else
  log "to install: $(echo $missing | tr '\n' ' ')"
  constraints="$(mktemp)"
  trap 'rm -f "$constraints"' EXIT
  printf '%s\n' "${pins[@]}" > "$constraints"
  # torch first, alone, from the local wheel (find-links /opt/wheels in pip.conf).
  if grep -qx "torch==2.13.0" <<<"$missing"; then
    log "pip install torch==2.13.0 (local CPU wheel)"
    pip_q install -q "torch==2.13.0"
  fi
  log "pip install the pinned dependencies (constrained: torch==2.13.0)"
  pip_q install -q -c "$constraints" "${pins[@]}"
  log "pip install --no-deps $recbole_pin"
  pip_q install -q --no-deps "$recbole_pin"
fi

log "checking the import (with run_recbole.py's ray/tensorboard stubs)"
"$vpy" "$here/run_recbole.py" --check-import
log "installed: $("$vpy" -m pip freeze 2>/dev/null | tr '\n' ' ')"
log "size: $(du -sh "$venv" | cut -f1)"
log "done: run the benchmark with $vpy bench/recbole/run_recbole.py ..."
