#!/bin/sh
# run-core.sh PORT DIR [USERS]
# Manual helper: renders kamailio.cfg.tmpl into DIR, creates USERS (default
# 100) db_text subscribers 1000.., checks the config and runs Kamailio in
# the foreground (Ctrl-C stops it). Location table:
#   kamcmd -s unix:DIR/ctl ul.dump
set -eu
here=$(cd "$(dirname "$0")" && pwd)
port=$1; dir=$(mkdir -p "$2" && cd "$2" && pwd); users=${3:-100}
"$here/gen-users.sh" 1000 "$users" "$dir/users.csv" "$dir/db"
sed -e "s|{{.Port}}|$port|g" -e "s|{{.DBDir}}|$dir/db|g" \
    -e "s|{{.CtlSock}}|$dir/ctl|g" -e "s|{{.LogRegister}}|1|g" \
    -e "s|{{.LogCalls}}|1|g" -e "s|{{.Children}}|4|g" \
    "$here/kamailio.cfg.tmpl" >"$dir/kamailio.cfg"
kamailio -c -f "$dir/kamailio.cfg" -Y "$dir"
exec kamailio -f "$dir/kamailio.cfg" -P "$dir/kamailio.pid" -Y "$dir" -w "$dir" -DD -E -m 256
