#!/usr/bin/env bash
# Installs everything origami needs to build, test and run on a Debian 12 machine.
# Idempotent: run it as often as you like. Needs root (or sudo) for apt-get.
#
#   scripts/setup.sh            install Debian packages + the test-time Python venv
#
# Runtime dependencies come from Debian packages only. Test-time Python tools
# (PyTorch from Debian, a pinned `transformers` from PyPI) live in .venv, made
# with --system-site-packages so it sees Debian's python3-torch.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "setup.sh: not root and no sudo; run it as root to install packages" >&2; exit 1
  fi
fi

packages=(
  # toolchain
  build-essential cmake ninja-build pkg-config git clang-format
  # host collectives, process bootstrap, point-to-point transfers
  openmpi-bin libopenmpi-dev libucx-dev
  # Slurm for the one-node cluster of the slurm tests (scripts/slurm/local_cluster.sh). Slurm's
  # PMIx plugin (srun --mpi=pmix) loads the unversioned libpmix.so, which only libpmix-dev ships.
  slurm-wlm slurmctld slurmd slurm-client munge libpmix2 libpmix-dev
  # configs, HTTP, tests, CPU GEMM, NVMe I/O, tokenizers (PCRE2 regexes, ICU normalisation)
  libprotobuf-dev protobuf-compiler libboost-dev libgtest-dev libgmock-dev
  libdnnl-dev liburing-dev libicu-dev nlohmann-json3-dev libpcre2-dev zlib1g-dev
  # libFuzzer for the ORIGAMI_FUZZ=ON build
  clang libclang-rt-14-dev
  # test-time references (never linked into origami)
  python3 python3-venv python3-torch python3-numpy python3-jinja2
  # demo corpus for the main job
  fortunes
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Without systemd (a container), package scripts would start munged (and try slurmd/slurmctld)
  # from /etc/init.d; the slurm tests start their own. Deny those starts while installing.
  if [ ! -e /usr/sbin/policy-rc.d ] && [ "$(cat /proc/1/comm 2>/dev/null)" != systemd ]; then
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
  fi
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup.sh: all Debian packages present"
fi

# Test-time Python environment: Debian's interpreter and torch, plus pinned PyPI tools.
venv="$here/.venv"
# openai: the official client of the serving tests (httpx pinned to a version it supports);
# prometheus-client: its parser checks the /metrics text.
pins=(transformers==4.40.2 tokenizers==0.19.1 huggingface-hub==0.24.7 safetensors==0.4.2
  openai==1.51.2 httpx==0.27.2 prometheus-client==0.20.0)
if [ ! -x "$venv/bin/python" ]; then
  echo "setup.sh: creating $venv"
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
# Reinstall whenever an installed version differs from its pin.
check='import importlib.metadata as m, sys
for pin in sys.argv[1:]:
    name, version = pin.split("==")
    assert m.version(name) == version, pin
import torch, transformers, openai, prometheus_client'
if ! "$venv/bin/python" -c "$check" "${pins[@]}" >/dev/null 2>&1; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "${pins[@]}"
fi
"$venv/bin/python" -c "import torch, transformers; print('setup.sh: torch', torch.__version__, 'transformers', transformers.__version__)"
