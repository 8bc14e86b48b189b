#!/bin/sh
# Writes the central broker's password file from the environment (compose.yaml passes the
# secrets from .env), then runs Mosquitto. Users: edge-server, device, and one per gateway
# from EDGE_GATEWAY_CREDENTIALS ("id:password,id:password").
set -eu
passwd=/mosquitto/data/passwd
: >"$passwd"
chmod 600 "$passwd"
mosquitto_passwd -b "$passwd" edge-server "$EDGE_SERVER_MQTT_PASSWORD"
mosquitto_passwd -b "$passwd" device "$EDGE_DEVICE_MQTT_PASSWORD"
echo "$EDGE_GATEWAY_CREDENTIALS" | tr ',' '\n' | while IFS=: read -r id secret; do
    [ -n "$id" ] && mosquitto_passwd -b "$passwd" "$id" "$secret"
done
chown mosquitto: "$passwd"
sed "s|^password_file .*|password_file $passwd|" /mosquitto/config/mosquitto.conf >/mosquitto/data/mosquitto.conf
exec /usr/sbin/mosquitto -c /mosquitto/data/mosquitto.conf
