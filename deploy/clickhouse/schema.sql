-- Portcullis flow records in ClickHouse: what `portcullis agent` and
-- `portcullis run` send with --clickhouse-url, and what
-- `portcullis blocked --clickhouse URL` reads (deploy/README.md, "ClickHouse").
--
-- Runs as it is on current ClickHouse and on Debian 12's 18.16, where
-- LowCardinality was still behind a setting:
--   clickhouse-client --multiquery < schema.sql
--   clickhouse-client --allow_experimental_low_cardinality_type=1 --multiquery < schema.sql   # before 19.x
-- Retention (30 days): ttl.sql on ClickHouse 19.6 and later, else
-- drop-old-partitions.sh every day (the tables are partitioned by day).
--
-- Every table is ordered by (node, namespace, pod, time): a pod's records
-- are together, the node first because each agent writes its own node's.
-- A minute may have more than one row per key in the per-minute tables
-- (an agent restart, a takeover, a pod removed mid-minute): sum them.
-- Delivery is at least once: a batch whose answer was lost is sent again.

CREATE DATABASE IF NOT EXISTS portcullis;

-- One row per blocked-log record (docs/BLOCKED-LOG.md): every field, '' or
-- 0 when the record has none. Times are milliseconds since the epoch
-- (18.16 has no DateTime64); `time` is the same in seconds.
CREATE TABLE IF NOT EXISTS portcullis.blocked
(
    time      DateTime,                -- the attempt (folded: the first one), UTC
    time_ms   UInt64,                  -- the same, in milliseconds since the epoch
    node      LowCardinality(String),
    namespace LowCardinality(String),
    pod       String,
    endpoint  String,
    v         UInt32,                  -- the record's schema version
    kind      LowCardinality(String),  -- attempt | lost (what the rate limit held back)
    verdict   LowCardinality(String),  -- blocked | audit
    reason    LowCardinality(String),  -- denied-default, denied-range, denied-dns-name, ...
    range     LowCardinality(String),  -- denied-range: metadata, private, link-local, ...
    decision  LowCardinality(String),  -- DNS-gate records: nxdomain, refused, stripped, ...
    protocol  LowCardinality(String),  -- tcp, udp, dns, ...
    dst       String,                  -- the destination address as text
    dst_hex   String,                  -- the same as 32 hex digits (IPv4 as ::ffff:a.b.c.d): CIDR filters
    dport     UInt16,
    host      String,                  -- the name the pod last resolved to dst; DNS records: the name asked
    pid       UInt32,
    comm      String,
    hook      LowCardinality(String),
    cgroup_id UInt64,
    ifindex   UInt32,
    count     UInt64,                  -- attempts this record stands for (folded repeats, or lost)
    first_ms  UInt64,                  -- folded and lost records: first and last attempt
    last_ms   UInt64,
    what      LowCardinality(String)   -- lost records: rate-limited
)
ENGINE = MergeTree
PARTITION BY toYYYYMMDD(time)
ORDER BY (node, namespace, pod, time);

-- Per pod, policy entry and minute: the connections and datagrams the
-- kernel allowed by that entry (the delta of the pod's per-entry counter;
-- a connection is a connect() or a TCP SYN on the pod's veth, a datagram is
-- judged one by one). No row for a minute without any.
CREATE TABLE IF NOT EXISTS portcullis.allowed_by_rule
(
    minute    DateTime,                -- start of the minute, UTC
    node      LowCardinality(String),
    namespace LowCardinality(String),
    pod       String,
    endpoint  String,
    rule      LowCardinality(String),  -- the entry as written: egress[0] toFQDNs api.openai.com ports 443/tcp
    allowed_connections_and_datagrams UInt64
)
ENGINE = MergeTree
PARTITION BY toYYYYMMDD(minute)
ORDER BY (node, namespace, pod, minute);

-- Per pod, DNS name and minute: the allowed lookups the DNS gate answered,
-- the addresses they taught the kernel (then reachable on `ports`), and
-- the ports the policy opens for the name. At most 10,000 names per node
-- and minute (more are counted as dropped).
CREATE TABLE IF NOT EXISTS portcullis.names_resolved
(
    minute    DateTime,                -- start of the minute, UTC
    node      LowCardinality(String),
    namespace LowCardinality(String),
    pod       String,
    endpoint  String,
    name      String,                  -- lower case, no trailing dot, escaped as the blocked log escapes
    ports     LowCardinality(String),  -- 443/tcp,80/tcp | any | '' (dns.allowNames: no traffic)
    lookups_answered  UInt64,
    addresses_learned UInt64
)
ENGINE = MergeTree
PARTITION BY toYYYYMMDD(minute)
ORDER BY (node, namespace, pod, minute);

-- Per pod, destination and minute: the connections the kernel allowed
-- (counted once per connection: a connect(), or a TCP SYN the pod's veth
-- alone judges), by the name the pod resolved to the address it reached
-- (the address itself when a toCIDRs entry allowed it), port and
-- protocol. A name's addresses are summed into one row.
CREATE TABLE IF NOT EXISTS portcullis.allowed_flows
(
    minute      DateTime,                -- start of the minute, UTC
    node        LowCardinality(String),
    namespace   LowCardinality(String),
    pod         String,
    endpoint    String,
    destination String,                  -- api.openai.com | 198.51.100.7
    port        UInt16,
    protocol    LowCardinality(String),  -- tcp, udp, sctp
    connections UInt64
)
ENGINE = MergeTree
PARTITION BY toYYYYMMDD(minute)
ORDER BY (node, namespace, pod, minute);
