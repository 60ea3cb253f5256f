#!/usr/bin/env bash
# Unpacks Debian's Exim (exim4-daemon-light) into /opt/effect-smtp-exim for test/support/daemons/exim.ts, next to an
# installed Postfix: the Debian packages conflict (both are the system MTA), but the tests only need the binary, never a
# system Exim. Idempotent: does nothing when the binary is there and runs. Needs root (apt-get, useradd, a setuid binary).
set -euo pipefail

# test/support/daemons/exim.ts looks for it here.
root="/opt/effect-smtp-exim"
binary="$root/usr/sbin/exim4"
# Compiled into Debian's binary (EXIM_USER=ref:Debian-exim): it will not even print its version without this user.
user="Debian-exim"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

works() { [ -x "$binary" ] && id -u "$user" >/dev/null 2>&1 && "$binary" -C /dev/null -bV >/dev/null 2>&1; }
if works; then exit 0; fi

if ! id -u "$user" >/dev/null 2>&1; then
  # What exim4-base's postinst would create; no home, no login.
  $SUDO useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$user"
fi

# apt-get download writes to the current directory, which must be writable (by _apt, too).
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
cd "$work"
$SUDO apt-get update -qq
# The binary is all in exim4-daemon-light; exim4-base and exim4-config only hold scripts and the system config.
$SUDO apt-get download exim4-daemon-light
deb="$(ls exim4-daemon-light_*.deb)"

# Its shared libraries, from its Depends (minus the Exim packages and debconf): plain libraries that Postfix does not
# mind. Only the missing ones (usually just libidn12), so that nothing installed is upgraded on the way.
libraries=()
for package in $(
  dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed -e 's/|.*//' -e 's/(.*)//' -e 's/[[:space:]]//g' |
    grep -v -E '^(exim4-.*|debconf.*|)$'
); do
  if [ "$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null)" != "installed" ]; then libraries+=("$package"); fi
done
if [ "${#libraries[@]}" -gt 0 ]; then
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${libraries[@]}"
fi

$SUDO rm -rf "$root"
$SUDO mkdir -p "$root"
$SUDO dpkg -x "$deb" "$root"
$SUDO chmod 755 "$root"

missing="$(ldd "$binary" | grep 'not found' || true)"
if [ -n "$missing" ]; then
  echo "install-exim.sh: $binary still misses libraries:" >&2
  echo "$missing" >&2
  exit 1
fi
"$binary" -C /dev/null -bV 2>/dev/null | sed -n 1p
