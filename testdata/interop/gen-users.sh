#!/bin/sh
# gen-users.sh FIRST COUNT CSV [DBDIR]
# Writes a sipp injection file (SEQUENTIAL; field0=user; field1=password pw<user>)
# and, with DBDIR, the Kamailio db_text tables (version + subscriber).
# Users are FIRST..FIRST+COUNT-1 with password pw<user>.
set -eu
first=$1; count=$2; csv=$3; db=${4:-}
last=$((first + count - 1))
{
	echo SEQUENTIAL
	seq "$first" "$last" | awk '{ printf "%s;pw%s\n", $1, $1 }'
} >"$csv"
if [ -n "$db" ]; then
	mkdir -p "$db"
	printf 'table_name(str) table_version(int)\nsubscriber:7\n' >"$db/version"
	{
		echo 'id(int,auto) username(str) domain(str) password(str) ha1(str,null) ha1b(str,null)'
		seq "$first" "$last" | awk '{ printf "%d:%s:sipedge.test:pw%s:::\n", NR, $1, $1 }'
	} >"$db/subscriber"
fi
