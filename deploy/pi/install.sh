#!/usr/bin/env bash
# Install, upgrade or remove the edge gateway on Raspberry Pi OS (bookworm; arm64, armhf).
#
#   sudo deploy/pi/install.sh install   [--wheel FILE | --source DIR] [options]
#   sudo deploy/pi/install.sh uninstall [--purge] [options]
#
# install (also the upgrade: run it again with a newer wheel or checkout):
#   - creates the system user `edge`;
#   - installs the package into a venv under /opt/edge with the gateway's dependencies only
#     (no Kafka, no PostgreSQL client);
#   - writes /etc/edge/gateway.toml from the commented sample and /etc/edge/registry.toml,
#     only when they do not exist yet (an upgrade keeps your config);
#   - installs the site broker's config for Mosquitto: /etc/mosquitto/conf.d/edge-site.conf,
#     a password file with the gateway's user (its password goes to /etc/edge/gateway.env,
#     mode 600) and an ACL that lets each device publish only under its own topics;
#   - installs the hardened systemd unit edge-gateway.service and (re)starts it.
#   The buffer under /var/lib/edge is never touched by an upgrade.
# uninstall: stops and removes the service, the venv and the unit; keeps /var/lib/edge and
#   /etc/edge unless --purge is given.
#
# Options (for packaging and tests): --root DIR (install into DIR as if it were /),
#   --no-systemctl (do not call systemctl), --no-apt (do not apt-get install), --python PY,
#   --pip-args "ARGS" (extra arguments to pip install).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
ACTION=${1:-}; shift || true
ROOT="" WHEEL="" SOURCE="" PURGE=0 SYSTEMCTL=1 APT=1 PYTHON=python3 PIP_ARGS=""
while [ $# -gt 0 ]; do
    case $1 in
        --root) ROOT=${2%/}; shift 2 ;;
        --wheel) WHEEL=$2; shift 2 ;;
        --source) SOURCE=$2; shift 2 ;;
        --purge) PURGE=1; shift ;;
        --no-systemctl) SYSTEMCTL=0; shift ;;
        --no-apt) APT=0; shift ;;
        --python) PYTHON=$2; shift 2 ;;
        --pip-args) PIP_ARGS=$2; shift 2 ;;
        *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

USER_NAME=edge
OPT="$ROOT/opt/edge"
ETC="$ROOT/etc/edge"
STATE="$ROOT/var/lib/edge"
UNIT="$ROOT/etc/systemd/system/edge-gateway.service"
MOSQ="$ROOT/etc/mosquitto"

say() { printf 'install: %s\n' "$*"; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }
systemctl_() { if [ "$SYSTEMCTL" = 1 ]; then systemctl "$@"; fi; }

ensure_user() {
    if [ -n "$ROOT" ]; then
        [ -f "$ROOT/etc/passwd" ] || { say "no $ROOT/etc/passwd: user $USER_NAME not created"; return; }
        grep -q "^$USER_NAME:" "$ROOT/etc/passwd" && return
        useradd --root "$ROOT" --system --home-dir /var/lib/edge --no-create-home \
            --shell /usr/sbin/nologin "$USER_NAME"
    else
        id "$USER_NAME" >/dev/null 2>&1 && return
        useradd --system --home-dir /var/lib/edge --no-create-home --shell /usr/sbin/nologin "$USER_NAME"
    fi
    say "created system user $USER_NAME"
}

owner() { # chown to the edge user where it exists in the target root
    if [ -z "$ROOT" ] || grep -q "^$USER_NAME:" "$ROOT/etc/passwd" 2>/dev/null; then
        local uid gid
        uid=$(awk -F: -v u="$USER_NAME" '$1 == u {print $3}' "${ROOT:-}/etc/passwd")
        gid=$(awk -F: -v u="$USER_NAME" '$1 == u {print $4}' "${ROOT:-}/etc/passwd")
        [ -n "$uid" ] && chown -R "$uid:$gid" "$@"
    fi
}

install_packages() {
    [ "$APT" = 1 ] || return 0
    local missing=()
    command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
    "$PYTHON" -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
}

install_venv() {
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "Python 3.11+ needed"
    [ -x "$OPT/venv/bin/python" ] || "$PYTHON" -m venv "$OPT/venv"
    local target=${WHEEL:-${SOURCE:-$REPO}}
    # shellcheck disable=SC2086 # PIP_ARGS is a list of arguments
    "$OPT/venv/bin/python" -m pip install -q --upgrade $PIP_ARGS "$target"
    say "installed $("$OPT/venv/bin/edge" version) into $OPT/venv (gateway dependencies only)"
}

install_config() {
    mkdir -p "$ETC" "$STATE"
    chmod 750 "$STATE"
    if [ ! -f "$ETC/gateway.toml" ]; then
        sed -e "s|^registry = .*|registry = \"/etc/edge/registry.toml\"|" "$HERE/gateway.toml" >"$ETC/gateway.toml"
        say "wrote $ETC/gateway.toml: set [node] id and [central_broker] before starting"
    else
        say "kept $ETC/gateway.toml"
    fi
    [ -f "$ETC/registry.toml" ] || cp "$REPO/fixtures/registry.toml" "$ETC/registry.toml"
    if [ ! -f "$ETC/gateway.env" ]; then
        local password; password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
        printf '# Secrets for edge-gateway.service (EnvironmentFile). Mode 600.\nEDGE_SITE_BROKER_PASSWORD=%s\n' \
            "$password" >"$ETC/gateway.env"
        chmod 600 "$ETC/gateway.env"
    fi
    owner "$STATE" "$ETC/gateway.env"
}

install_mosquitto() {
    mkdir -p "$MOSQ/conf.d"
    # The distribution's mosquitto.conf already sets persistence_location and log_dest.
    grep -v -E '^(persistence_location|log_dest) ' "$HERE/mosquitto/site.conf" >"$MOSQ/conf.d/edge-site.conf"
    cp "$HERE/mosquitto/edge-site.acl" "$MOSQ/edge-site.acl"
    local password; password=$(sed -n 's/^EDGE_SITE_BROKER_PASSWORD=//p' "$ETC/gateway.env")
    [ -f "$MOSQ/edge-site.passwd" ] || : >"$MOSQ/edge-site.passwd"
    mosquitto_passwd -b "$MOSQ/edge-site.passwd" edge-gateway "$password"
    chmod 640 "$MOSQ/edge-site.passwd"
    say "site broker: $MOSQ/conf.d/edge-site.conf; add devices with: mosquitto_passwd $MOSQ/edge-site.passwd <device-id>"
}

install_unit() {
    mkdir -p "$(dirname "$UNIT")"
    cp "$HERE/edge-gateway.service" "$UNIT"
    systemctl_ daemon-reload
    systemctl_ enable edge-gateway.service
    systemctl_ restart mosquitto.service
    systemctl_ restart edge-gateway.service
    say "installed $UNIT"
}

case $ACTION in
    install)
        [ "$(id -u)" = 0 ] || die "run as root (sudo)"
        install_packages
        ensure_user
        install_venv
        install_config
        install_mosquitto
        install_unit
        say "done. Status: systemctl status edge-gateway; edge buffer stats --config /etc/edge/gateway.toml"
        ;;
    uninstall)
        [ "$(id -u)" = 0 ] || die "run as root (sudo)"
        systemctl_ disable --now edge-gateway.service || true
        rm -f "$UNIT" "$MOSQ/conf.d/edge-site.conf"
        systemctl_ daemon-reload
        rm -rf "$OPT"
        if [ "$PURGE" = 1 ]; then
            rm -rf "$STATE" "$ETC" "$MOSQ/edge-site.passwd" "$MOSQ/edge-site.acl"
            say "removed the gateway, its config and its data"
        else
            say "removed the gateway; kept $STATE (buffer) and $ETC (config): --purge removes them"
        fi
        ;;
    *) sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
