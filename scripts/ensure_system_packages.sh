#!/bin/sh
# Debian packages some tests need: Chromium + chromedriver (dashboard browser test), nginx (the fleet proxy
# test), PostgreSQL (registry tests on PostgreSQL). Installs what is missing when this user may (root, or
# passwordless sudo); otherwise says so, and those tests skip with the same reason. Never fails the build by
# itself.
missing=""
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v chromedriver >/dev/null 2>&1 || missing="$missing chromium-driver"
{ command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; } || missing="$missing nginx-light"
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing="$missing postgresql"
[ -z "$missing" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure_system_packages: no apt-get here; install$missing to run every test"; exit 0
fi
if [ "$(id -u)" = "0" ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
  echo "ensure_system_packages: not root and no passwordless sudo; tests needing$missing will be skipped"; exit 0
fi
echo "ensure_system_packages: installing$missing (Debian packages)"
$SUDO apt-get update -qq >/dev/null 2>&1
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null 2>&1 \
  || echo "ensure_system_packages: apt-get could not install$missing; tests needing them will be skipped"
exit 0
