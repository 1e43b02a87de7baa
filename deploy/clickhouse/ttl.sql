-- Retention on ClickHouse 19.6 and later: rows go 30 days after their
-- time (merges remove them; whole daily partitions at once).
--   clickhouse-client --multiquery < ttl.sql
-- Not on 18.16 (Debian 12), which has no TTL: run drop-old-partitions.sh
-- every day instead.
ALTER TABLE portcullis.blocked MODIFY TTL time + INTERVAL 30 DAY;
ALTER TABLE portcullis.allowed_by_rule MODIFY TTL minute + INTERVAL 30 DAY;
ALTER TABLE portcullis.names_resolved MODIFY TTL minute + INTERVAL 30 DAY;
ALTER TABLE portcullis.allowed_flows MODIFY TTL minute + INTERVAL 30 DAY;
