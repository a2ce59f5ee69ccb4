#!/usr/bin/env bash
# TorchRec for embedding.sharding, in one command: bash scripts/install_torchrec.sh
#
# torchrec 1.8.0's metadata asks for `fbgemm-gpu` (the CUDA build) and `torchmetrics==1.0.3`, which
# pip would resolve by replacing this project's torch 2.13.0 (GBs). pyproject extras cannot say
# --no-deps, so: the extra `torchrec` installs what torchrec imports, fbgemm comes in the build that
# matches the installed torch (fbgemm-gpu-cpu on a CPU build), and torchrec itself goes in without
# its dependencies. torch stays pinned at 2.13.0 throughout.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
FBGEMM_VERSION=1.8.0
TORCHREC_VERSION=1.8.0
if "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)"; then
    fbgemm="fbgemm-gpu==$FBGEMM_VERSION"
else
    fbgemm="fbgemm-gpu-cpu==$FBGEMM_VERSION"
fi
"$PYTHON" -m pip install -e '.[torchrec]' "$fbgemm" "torch==2.13.0"
"$PYTHON" -m pip install --no-deps "torchrec==$TORCHREC_VERSION"
"$PYTHON" -c "import torchrec, fbgemm_gpu; print('torchrec', torchrec.__version__, 'fbgemm', fbgemm_gpu.__version__)"
