#!/bin/sh
# Starts Mosquitto with the dynamic-security plugin. On the first start it
# creates the plugin's state with the admin account device-registry uses;
# on every start it (re)creates the gateway's account. The same accounts as
# the local stack (crates/xtask/src/stack.rs, ACCOUNTS).
set -eu
STATE=/mosquitto/data/dynamic-security.json
: "${MQTT_ADMIN_PASSWORD:?}" "${MQTT_GATEWAY_PASSWORD:?}"
if [ ! -f "$STATE" ]; then
    mosquitto_ctrl dynsec init "$STATE" platform.admin "$MQTT_ADMIN_PASSWORD"
    chown mosquitto:mosquitto "$STATE"
fi
mosquitto -c /mosquitto/config/mosquitto.conf &
broker=$!
ctrl() {
    mosquitto_ctrl -h 127.0.0.1 -p 1883 -u platform.admin -P "$MQTT_ADMIN_PASSWORD" dynsec "$@" >/dev/null 2>&1
}
tries=0
until ctrl listClients; do
    tries=$((tries + 1))
    if [ "$tries" -gt 100 ]; then
        echo "mosquitto did not accept the admin account" >&2
        exit 1
    fi
    sleep 0.2
done
# "already exists" on a restart is fine.
ctrl createRole platform.gateway || true
ctrl addRoleACL platform.gateway subscribePattern '#' allow || true
ctrl addRoleACL platform.gateway subscribePattern '$share/#' allow || true
ctrl addRoleACL platform.gateway subscribeLiteral '$SYS/broker/publish/messages/received' allow || true
ctrl createClient platform.gateway -p "$MQTT_GATEWAY_PASSWORD" || true
ctrl addClientRole platform.gateway platform.gateway || true
ctrl setClientPassword platform.gateway "$MQTT_GATEWAY_PASSWORD"
touch /tmp/provisioned
wait "$broker"
