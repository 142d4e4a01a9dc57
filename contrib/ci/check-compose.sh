#!/usr/bin/env bash
# Checks contrib/compose.yaml with `docker compose config` (or docker-compose): it parses with the
# secrets set, and refuses, naming the variable, when a secret is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
else
  echo "neither 'docker compose' nor docker-compose is installed; on Debian: apt-get install docker-compose" >&2
  exit 1
fi
file=contrib/compose.yaml

echo "== ${compose[*]} config: $file parses with the secrets set"
SHADOW_API_TOKEN=ci-token MINIO_ROOT_PASSWORD=ci-password-0123 "${compose[@]}" -f "$file" config -q

echo "== and refuses without them, naming what to set"
if out=$(env -u SHADOW_API_TOKEN -u MINIO_ROOT_PASSWORD "${compose[@]}" -f "$file" config -q 2>&1); then
  echo "$file was accepted without SHADOW_API_TOKEN / MINIO_ROOT_PASSWORD; it must refuse" >&2
  exit 1
fi
if ! grep -q "MINIO_ROOT_PASSWORD\|SHADOW_API_TOKEN" <<<"$out"; then
  echo "the refusal does not name the missing variable:" >&2
  echo "$out" >&2
  exit 1
fi
echo "ok"
