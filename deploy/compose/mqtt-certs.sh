#!/bin/sh
# Makes the MQTT broker's TLS files docker-compose mounts (as secrets), in
# deploy/compose/tls/, which git ignores: no key is committed.
#   sh deploy/compose/mqtt-certs.sh [NAME|IP ...]
# A CA of your own (ca.pem, ca.key; kept when it exists, so devices keep
# trusting it) and the broker's certificate (server.pem, server.key),
# signed by it, for `mosquitto` (the services connect by that name),
# localhost and 127.0.0.1, and every NAME or IP given: the names devices
# connect by. Devices trust ca.pem. With a CA of your organisation's, put
# its certificate in ca.pem and a server.pem/server.key it signed instead.
set -eu
dir="$(dirname "$0")/tls"
mkdir -p "$dir"
cd "$dir"
san="DNS:mosquitto,DNS:localhost,IP:127.0.0.1"
for name in "$@"; do
    case $name in
        *[!0-9.]*) san="$san,DNS:$name" ;;
        *) san="$san,IP:$name" ;;
    esac
done
ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
if [ ! -f ca.pem ]; then
    # shellcheck disable=SC2086
    openssl req -x509 $ec -keyout ca.key -out ca.pem -days 3650 \
        -subj "/CN=iot-platform MQTT CA"
fi
printf 'subjectAltName = %s\nextendedKeyUsage = serverAuth\nbasicConstraints = CA:FALSE\n' \
    "$san" >server.ext
# shellcheck disable=SC2086
openssl req $ec -keyout server.key -out server.csr -subj "/CN=mosquitto"
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
    -out server.pem -days 825 -extfile server.ext
rm -f server.csr server.ext
# The entrypoint copies the key for the broker's own user; the services
# (user 10001) read the CA.
chmod 600 ca.key server.key
chmod 644 ca.pem server.pem
echo "made $(pwd)/server.pem for $san"
