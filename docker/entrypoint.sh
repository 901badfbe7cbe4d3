#!/bin/sh
# The image's entry point: runs its arguments (twistd -n --pidfile= distpotify, or
# distpotify-proxy) after the one setting that only the running container can know.
#
# A replica's multicast heartbeats must leave by the container's own interface, whose
# address Docker assigns at start. Unless DISTPOTIFY_MULTICAST_INTERFACE is set, it becomes
# the address Docker wrote for this container's hostname in /etc/hosts (a file read, no DNS).
set -eu

needs_interface() {
    [ -z "${DISTPOTIFY_MULTICAST_INTERFACE:-}" ] || return 1
    [ "${DISTPOTIFY_HEARTBEAT:-multicast}" = multicast ] || return 1
    for argument in "$@"; do
        [ "$argument" = distpotify ] && return 0
    done
    return 1
}

if needs_interface "$@"; then
    address="$(python -c '
import socket
name = socket.gethostname()
with open("/etc/hosts") as hosts:
    for line in hosts:
        fields = line.split("#", 1)[0].split()
        if name in fields[1:] and "." in fields[0] and not fields[0].startswith("127."):
            print(fields[0])
            break
')"
    if [ -z "$address" ]; then
        echo "distpotify-entrypoint: /etc/hosts gives this container's hostname no address" \
             "but loopback; set DISTPOTIFY_MULTICAST_INTERFACE" >&2
        exit 2
    fi
    DISTPOTIFY_MULTICAST_INTERFACE="$address"
    export DISTPOTIFY_MULTICAST_INTERFACE
fi

exec "$@"
