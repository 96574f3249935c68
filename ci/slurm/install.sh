#!/usr/bin/env bash
# Install Debian's Slurm and munge if any of their programs is missing (CI runs this before pytest).
# Needs root and a reachable Debian mirror; exits non-zero with a clear message otherwise.
set -euo pipefail

needed=(slurmctld slurmd sbatch srun scontrol munged)
missing=()
for prog in "${needed[@]}"; do
    command -v "$prog" >/dev/null 2>&1 || [[ -x "/usr/sbin/$prog" ]] || missing+=("$prog")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "slurm already installed: $(dpkg-query -W -f='${Version}' slurmctld 2>/dev/null)"
    exit 0
fi
echo "installing slurm (missing: ${missing[*]})"
if [[ $(id -u) -ne 0 ]]; then
    echo "error: installing slurm needs root (apt-get); run ci/slurm/install.sh as root" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
echo "installed slurm $(dpkg-query -W -f='${Version}' slurmctld)"
