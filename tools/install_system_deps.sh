#!/usr/bin/env bash
# Install the Debian/Ubuntu packages that `make setup` needs, only those that are missing.
# cmake + g++: build vision_msgs into the venv; python3-dev: its Python extension;
# mosquitto: the broker for tests and the demo; iproute2/util-linux: loopback-only isolation;
# openssl: test certificates for the TLS + ACL test; npm: the AsyncAPI schemas the MQTT API
# document is validated with.
# `tools/install_system_deps.sh --images` installs only what `make images` needs instead
# (podman, buildah, debootstrap: build the container images as root with vfs storage); `make
# test` never needs them.
set -euo pipefail

PYTHON=${PYTHON:-python3}
missing=()

# What `make setup` and `make test` need.
setup_deps() {
  command -v cmake >/dev/null || missing+=(cmake)
  command -v g++ >/dev/null || missing+=(g++)
  command -v make >/dev/null || missing+=(make)
  command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
  command -v ip >/dev/null || missing+=(iproute2)
  command -v unshare >/dev/null || missing+=(util-linux)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v npm >/dev/null || missing+=(npm)
  if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing+=("python3-venv")
  fi
  if ! "$PYTHON" - <<'PY' >/dev/null 2>&1
import os, sysconfig, sys
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')) else 1)
PY
  then
    missing+=("python3-dev")
  fi
}

# What `make images` needs (tools/build_images.sh), and only it.
images_deps() {
  command -v podman >/dev/null || missing+=(podman)
  command -v buildah >/dev/null || missing+=(buildah)
  command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
}

case "${1:-}" in
  '') setup_deps ;;
  --images) images_deps ;;
  *) echo "usage: $0 [--images]" >&2; exit 2 ;;
esac

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "install_system_deps: installing ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null; then
  SUDO=(sudo)
else
  echo "install_system_deps: need root (or sudo) to apt-get install ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
# The Debian mosquitto package starts a system broker on port 1883; the suite starts its own
# on a free loopback port and does not need it.
