#!/usr/bin/env bash
# Run a command in a private network namespace that holds only the loopback interface, so
# that nothing it starts (DDS participants, brokers, clients) can reach another machine.
# rmw_fastrtps in LOCALHOST mode opens send sockets on every interface (see
# test/test_loopback_only.py); here there is no other interface to open them on.
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }

inner='ip link set lo up && exec "$@"'
if unshare --net true 2>/dev/null; then
  exec unshare --net sh -c "$inner" sh "$@"
elif unshare --net --map-root-user true 2>/dev/null; then
  exec unshare --net --map-root-user sh -c "$inner" sh "$@"
fi
echo "run_isolated: cannot create a network namespace here (needs root or user namespaces);" \
     "running without isolation: test_loopback_only will report any non-loopback socket" >&2
exec "$@"
