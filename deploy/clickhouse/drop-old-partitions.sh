#!/bin/sh
# Retention for every ClickHouse version (TTL came in 19.6; Debian 12 has
# 18.16): drops the daily partitions of the Portcullis tables that are older
# than DAYS days (default 30). Run it once a day (cron, a CronJob).
#
#   drop-old-partitions.sh [DAYS]
#
# CLICKHOUSE_CLIENT is the client command with its connection flags
# (default: clickhouse-client), e.g.
#   CLICKHOUSE_CLIENT='clickhouse-client --host ch --user portcullis_admin' drop-old-partitions.sh 30
# PORTCULLIS_CLICKHOUSE_DATABASE names the database (default portcullis).
set -eu

days=${1:-30}
db=${PORTCULLIS_CLICKHOUSE_DATABASE:-portcullis}
client=${CLICKHOUSE_CLIENT:-clickhouse-client}

case $days in
    '' | *[!0-9]*) echo "drop-old-partitions.sh: DAYS must be a number of days, not '$days'" >&2; exit 2 ;;
esac
case $db in
    '' | [0-9]* | *[!A-Za-z0-9_]*) echo "drop-old-partitions.sh: '$db' is not a plain database name" >&2; exit 2 ;;
esac

# Partitions are toYYYYMMDD of the row's time: a day older than the cut
# has a smaller number.
$client --query "SELECT table, partition FROM system.parts
    WHERE database = '$db' AND table IN ('blocked', 'allowed_by_rule', 'names_resolved', 'allowed_flows') AND active
      AND toUInt32(partition) < toUInt32(toYYYYMMDD(today() - $days))
    GROUP BY table, partition ORDER BY table, partition FORMAT TSV" |
while read -r table partition; do
    case $partition in
        '' | *[!0-9]*) continue ;;
    esac
    echo "dropping $db.$table partition $partition"
    $client --query "ALTER TABLE $db.$table DROP PARTITION $partition"
done
