#!/bin/sh
# Starts Mosquitto with the dynamic-security plugin. On the first start it
# creates the plugin's state with the admin account device-registry uses;
# on every start it (re)creates the platform's other accounts, once the
# broker answers. The same accounts as the local stack
# (crates/xtask/src/stack.rs, ACCOUNTS). The broker replaces this shell
# (exec), so it gets SIGTERM and saves its state on `docker compose stop`.
set -eu
STATE=/mosquitto/data/dynamic-security.json
: "${MQTT_ADMIN_PASSWORD:?}" "${MQTT_GATEWAY_PASSWORD:?}" "${MQTT_PUBLISHER_PASSWORD:?}"
rm -f /tmp/provisioned
# The TLS listener's files (compose secrets, owned by whoever made them),
# copied for the broker's own user.
install -d -o mosquitto -g mosquitto -m 700 /mosquitto/tls
install -o mosquitto -g mosquitto -m 644 /run/secrets/mqtt-server-cert /mosquitto/tls/server.pem
install -o mosquitto -g mosquitto -m 600 /run/secrets/mqtt-server-key /mosquitto/tls/server.key
if [ ! -f "$STATE" ]; then
    mosquitto_ctrl dynsec init "$STATE" platform.admin "$MQTT_ADMIN_PASSWORD"
    chown mosquitto:mosquitto "$STATE"
fi

ctrl() {
    mosquitto_ctrl -h 127.0.0.1 -p 1883 -u platform.admin -P "$MQTT_ADMIN_PASSWORD" dynsec "$@" >/dev/null 2>&1
}

# account USER PASSWORD ACL_TYPE TOPIC [ACL_TYPE TOPIC ...]: a client with
# a role of its own name; "already exists" on a restart is fine.
account() {
    user=$1 password=$2
    shift 2
    ctrl createRole "$user" || true
    while [ $# -ge 2 ]; do
        ctrl addRoleACL "$user" "$1" "$2" allow || true
        shift 2
    done
    ctrl createClient "$user" -p "$password" || true
    ctrl addClientRole "$user" "$user" || true
    ctrl setClientPassword "$user" "$password"
}

provision() {
    tries=0
    until ctrl listClients; do
        tries=$((tries + 1))
        if [ "$tries" -gt 150 ]; then
            echo "mosquitto did not accept the admin account" >&2
            return 1
        fi
        sleep 0.2
    done
    account platform.gateway "$MQTT_GATEWAY_PASSWORD" \
        subscribePattern '#' \
        subscribePattern '$share/#' \
        subscribeLiteral '$SYS/broker/publish/messages/received'
    # Load generators (`iotctl simulate`) publishing for many devices.
    account platform.publisher "$MQTT_PUBLISHER_PASSWORD" publishClientSend '#'
    touch /tmp/provisioned
}

provision &
exec mosquitto -c /mosquitto/config/mosquitto.conf
