#!/bin/sh
# A stand-in for ssh, for MPI launchers: `netns-rsh.sh [options] HOST CMD...`
# runs CMD inside network namespace HOST (see netns-hosts.sh), in a private UTS
# namespace whose host name is HOST, so Open MPI keeps each fake host's session
# files apart. Options (as ssh would get them) are ignored.
while [ $# -gt 0 ]; do
  case "$1" in
    -*) shift ;;
    *) break ;;
  esac
done
host=$1
shift
exec ip netns exec "$host" unshare --uts /bin/sh -c "hostname $host; $*"
