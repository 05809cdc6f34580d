#!/usr/bin/env bash
# System tools the workflow tests drive for real: SLURM (slurmctld, slurmd, munge) and headless
# Chromium (renders the MLflow UI). Debian packages; needs root. Idempotent: skips what is there.
set -euo pipefail
need=()
command -v slurmctld >/dev/null || need+=(slurm-wlm)
command -v munged >/dev/null || need+=(munge)
command -v chromium >/dev/null || need+=(chromium)
if ((${#need[@]})); then
    if [[ $(id -u) != 0 ]]; then
        echo "system-deps: not root, cannot install ${need[*]}; the tests that need them will be skipped" >&2
        exit 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
echo "system-deps: slurm, munge and chromium present"
