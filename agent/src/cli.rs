//! Command line (clap derive; every flag also reads an environment variable).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Per-pod egress enforcement in the kernel: hostname allowlists learned from DNS before the workload sees the answer",
    long_about = None,
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Load the kernel programs without per-pod flow counting (their
    /// per-packet cost, for `cargo xtask bench`'s comparison): the
    /// per-pod connection, rule, range and byte counts stay at 0.
    #[arg(long, global = true, env = "PORTCULLIS_NO_FLOW_COUNTERS")]
    pub no_flow_counters: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one command under an egress allowlist.
    #[command(after_help = EXEC_EXAMPLES)]
    Exec(ExecArgs),
    /// Standalone node mode: enforce policies on existing cgroups until a signal.
    #[command(after_help = RUN_EXAMPLES)]
    Run(RunArgs),
    /// Kubernetes node agent (the DaemonSet's command): enforce the EgressPolicies
    /// of this node's pods, found through the API server.
    #[command(after_help = AGENT_EXAMPLES)]
    Agent(Box<AgentArgs>),
    /// Stop the enforcement `run --pin-path` left in the kernel (uninstall).
    #[command(after_help = UNPIN_EXAMPLES)]
    Unpin(UnpinArgs),
    /// Validate a policy file and print what it compiles to.
    #[command(after_help = CHECK_EXAMPLES)]
    CheckPolicy(CheckArgs),
    /// Is a pod allowed to reach HOST[:PORT], and why? Asks the running
    /// agent (its live maps, the kernel's own decision); prints the smallest
    /// policy change that would allow it, where one may. Exit 1 if blocked.
    #[command(after_help = EXPLAIN_EXAMPLES)]
    Explain(ExplainArgs),
    /// Print the CustomResourceDefinitions (EgressPolicy, ClusterEgressPolicy)
    /// generated from the agent's types, or write one file per CRD.
    Crds(CrdsArgs),
    /// Show this node's blocked-connection log, filtered (read from its
    /// files; no server needed).
    #[command(after_help = crate::blocked::query::args::BLOCKED_EXAMPLES)]
    Blocked(crate::blocked::query::BlockedArgs),
    /// Print the policy lines a pod's blocked attempts imply, for review.
    #[command(after_help = crate::blocked::query::args::SUGGEST_EXAMPLES)]
    Suggest(crate::blocked::query::SuggestArgs),
}

const AGENT_EXAMPLES: &str = "\
Examples:
  # In the DaemonSet (deploy/base/daemonset.yaml): NODE_NAME and POD_UID from the downward API.
  portcullis agent --pin-path /sys/fs/bpf/portcullis --metrics-addr 0.0.0.0:9464

  # Against a test API server (plain HTTP, no credentials), kubelet's cgroups under a test root:
  portcullis agent --node-name node-a --pod-uid $UID_OF_ITS_POD --pin-path /sys/fs/bpf/pc-test \\
    --api-server http://127.0.0.1:8001 --kubepods /sys/fs/cgroup/test/kubepods.slice";

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// This node's name (`spec.nodeName` of its pods; downward API).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// The agent's own pod UID (downward API `metadata.uid`): that pod is
    /// exempt before anything else, without asking the API server.
    #[arg(long, env = "POD_UID")]
    pub pod_uid: String,
    /// The agent's own pod name and namespace (downward API), for its
    /// exempt endpoint's name before the API server is asked.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,
    /// API server URL without credentials (tests). Default: the in-cluster
    /// service account, else the kubeconfig.
    #[arg(long, env = "PORTCULLIS_API_SERVER", value_name = "URL")]
    pub api_server: Option<String>,
    /// The host's cgroup2 mount. Default: found in /proc/self/mountinfo.
    #[arg(long, env = "PORTCULLIS_CGROUP_ROOT", value_name = "DIR")]
    pub cgroup_root: Option<PathBuf>,
    /// Kubelet's pod parent cgroup, relative to the cgroup root or
    /// absolute. Default: `kubepods.slice` (systemd driver) or `kubepods`
    /// (cgroupfs), whichever exists.
    #[arg(long, env = "PORTCULLIS_KUBEPODS", value_name = "DIR")]
    pub kubepods: Option<PathBuf>,
    /// Namespaces whose pods are not enforced (shown as exempt).
    #[arg(long, env = "PORTCULLIS_EXEMPT_NAMESPACES", value_delimiter = ',', default_value = "kube-system,portcullis-system")]
    pub exempt_namespaces: Vec<String>,
    /// RuntimeClass names of sandboxed runtimes (a trailing `*` is a
    /// prefix): their pods are reported as not enforceable by cgroup hooks.
    #[arg(long, env = "PORTCULLIS_SANDBOXED_RUNTIMES", value_delimiter = ',', default_value = "gvisor,runsc,kata*")]
    pub sandboxed_runtimes: Vec<String>,
    /// The network namespace holding the pods' host-side veths: the node's
    /// (the agent's own, as the DaemonSet is hostNetwork).
    #[arg(long, env = "PORTCULLIS_NODE_NETNS", default_value = "/proc/self/ns/net", value_name = "PATH")]
    pub node_netns: PathBuf,
    /// No veth programs on the pods' veths (cgroup hooks only): packet
    /// sockets, TUN devices and gVisor/Kata pods are then not enforced
    /// (each pod's gaps say so).
    #[arg(long, env = "PORTCULLIS_NO_POD_VETHS")]
    pub no_pod_veths: bool,
    /// Name prefixes of the pods' host-side veths (your CNI's). Every new
    /// veth with one of them, whose other end is in another namespace,
    /// gets the veth programs at once and drops everything until the agent
    /// knows its pod. "" matches every such veth (CNIs without a prefix).
    #[arg(long, env = "PORTCULLIS_POD_VETH_PREFIXES", value_delimiter = ',', default_value = "lxc,cali,veth,eni,vlan,gke,azv")]
    pub pod_veth_prefixes: Vec<String>,
    /// Names of such veths that are not pods' (Cilium's health endpoint).
    #[arg(long, env = "PORTCULLIS_POD_VETH_EXCLUDE", value_delimiter = ',', default_value = "lxc_health")]
    pub pod_veth_exclude: Vec<String>,
    /// The cluster's DNS, the resolvers of `dnsPolicy: ClusterFirst` pods
    /// (kubelet's `clusterDNS`). Pods' own resolv.conf files are never
    /// read: the workload can write them.
    #[arg(long, env = "PORTCULLIS_CLUSTER_DNS", value_delimiter = ',', value_name = "IP")]
    pub cluster_dns: Vec<std::net::IpAddr>,
    /// The Service whose ClusterIPs are the cluster's DNS when kubelet's
    /// `clusterDNS` is given neither by `--cluster-dns` nor by its config
    /// file (NAMESPACE/NAME).
    #[arg(long, env = "PORTCULLIS_CLUSTER_DNS_SERVICE", value_name = "NS/NAME", default_value = "kube-system/kube-dns")]
    pub cluster_dns_service: String,
    /// Kubelet's config file: its `clusterDNS` is used when `--cluster-dns`
    /// is not given.
    #[arg(long, env = "PORTCULLIS_KUBELET_CONFIG", value_name = "FILE", default_value = "/var/lib/kubelet/config.yaml")]
    pub kubelet_config: PathBuf,
    /// Pin programs and maps here (bpffs): enforcement outlives the agent,
    /// and pods stay denied, not open, while no agent runs.
    #[arg(long, env = "PORTCULLIS_PIN_PATH", value_name = "DIR")]
    pub pin_path: PathBuf,
    /// The handover socket, the learned-state snapshot and the last known
    /// pods (a restart without the API server keeps enforcing them).
    #[arg(long, env = "PORTCULLIS_STATE_DIR", value_name = "DIR", default_value = "/var/run/portcullis")]
    pub state_dir: PathBuf,
    /// Serve `/metrics`, `/healthz` and `/readyz` here.
    #[arg(long, env = "PORTCULLIS_METRICS_ADDR", value_name = "IP:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// How long a gone pod's series stay on `/metrics` with their final
    /// values (so the last increments are scraped), e.g. 60s.
    #[arg(long, env = "PORTCULLIS_METRICS_POD_GRACE", value_name = "DURATION", default_value = "60s",
        value_parser = humantime::parse_duration)]
    pub metrics_pod_grace: std::time::Duration,
    /// The blocked log's file (instead of `DIR/blocked.log` of
    /// --blocked-log-dir); the records also go to stdout.
    #[arg(long, env = "PORTCULLIS_LOG", value_name = "FILE")]
    pub log: Option<PathBuf>,
    #[command(flatten)]
    pub blocked_log: crate::blocked::BlockedLogArgs,
    /// Created once ready (every watch listed, pods reconciled): a
    /// readiness probe that reads a file of its own container cannot be
    /// answered by the previous agent during a rolling update, as an HTTP
    /// probe on the shared host port can.
    #[arg(long, env = "PORTCULLIS_READY_FILE", value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    /// Post a Kubernetes Event on a pod when it is blocked (at most one per
    /// pod per 10 minutes), pointing at the blocked log.
    #[arg(long, env = "PORTCULLIS_POD_EVENTS")]
    pub pod_events: bool,
    #[command(flatten)]
    pub clickhouse: crate::clickhouse::ClickHouseArgs,
}

#[derive(Debug, Args)]
pub struct CrdsArgs {
    /// Write `<crd name>.yaml` files into this directory instead of stdout.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

const EXEC_EXAMPLES: &str = "\
Examples:
  # Allow only api.openai.com on 443, resolve through 198.51.100.53:
  portcullis exec --allow-fqdn api.openai.com:443 --dns-server 198.51.100.53 -- python3 agent.py

  # A policy file, blocked attempts to a file, the command in a pod network namespace:
  portcullis exec --policy agent-policy.yaml --log blocked.jsonl -- nsenter --net=/run/netns/pod curl https://api.openai.com/

  # Audit: let everything through, log what would be blocked:
  portcullis exec --policy agent-policy.yaml --audit -- ./agent

Exit status: the command's own (128+N if it died of signal N); 2 for a bad policy or
bad flags; 125 if the agent itself failed (not root, no cgroup v2, program load failed).";

const RUN_EXAMPLES: &str = "\
Examples:
  portcullis run --config /etc/portcullis/node.yaml

node.yaml:
  log: /var/log/portcullis/blocked.log       # rotated (10 MiB x 5); records also on stdout
  metricsAddr: 0.0.0.0:9464                  # Prometheus /metrics (optional)
  endpoints:
    - name: agent-a
      namespace: team-a
      pod: agent-a-0
      cgroup: /sys/fs/cgroup/kubepods.slice/kubepods-pod1234.slice
      policyFile: /etc/portcullis/agent-a.yaml   # or an inline `policy:` block
      audit: false

  # Blocked records, allowed connections per policy entry and names resolved per minute
  # also to ClickHouse (deploy/clickhouse/schema.sql), password from a file:
  portcullis run --config node.yaml --clickhouse-url http://clickhouse.example:8123 \\
    --clickhouse-user portcullis --clickhouse-password-file /etc/portcullis/clickhouse-password

  # DaemonSet mode: programs and maps pinned in bpffs keep enforcing while the
  # agent is down; a new agent adopts them and takes over from a running one
  # (rolling update with maxSurge: 1) without a DNS gap:
  portcullis run --config node.yaml --pin-path /sys/fs/bpf/portcullis --state-dir /var/run/portcullis";

const UNPIN_EXAMPLES: &str = "\
Examples:
  # Stop enforcing on every cgroup `run` pinned programs to, free the maps:
  portcullis unpin --pin-path /sys/fs/bpf/portcullis --state-dir /var/run/portcullis";

const CHECK_EXAMPLES: &str = "\
Examples:
  portcullis check-policy deploy/examples/agent-policy.yaml
  portcullis check-policy --allow-fqdn '*.slack.com:443' p.yaml";

/// Flags shared by commands that take a policy.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// Policy file (YAML; the `spec` of an EgressPolicy).
    #[arg(long, env = "PORTCULLIS_POLICY", value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Also allow a host name or pattern, optionally on one TCP port.
    #[arg(long = "allow-fqdn", value_name = "NAME[:PORT]")]
    pub allow_fqdn: Vec<String>,
    /// Also allow a CIDR, optionally on one TCP port (IPv6: [2001:db8::/32]:443).
    #[arg(long = "allow-cidr", value_name = "CIDR[:PORT]")]
    pub allow_cidr: Vec<String>,
    /// Trusted resolver (replaces the policy's and /etc/resolv.conf's).
    #[arg(long = "dns-server", value_name = "IP[:PORT]")]
    pub dns_server: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Record what would be blocked, block nothing.
    #[arg(long, env = "PORTCULLIS_AUDIT")]
    pub audit: bool,
    /// Write blocked attempts as JSON lines here, rotated at 10 MiB, 5 files
    /// kept (default: stderr).
    #[arg(long, env = "PORTCULLIS_LOG", value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Shortest time a learned IP stays allowed, whatever the DNS TTL.
    #[arg(long, env = "PORTCULLIS_MIN_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub min_ttl: std::time::Duration,
    /// Longest time a learned IP stays allowed, whatever the DNS TTL.
    #[arg(long, env = "PORTCULLIS_MAX_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub max_ttl: std::time::Duration,
    /// Answer to a query for a name the policy does not allow: nxdomain
    /// (default; musl gives up the search list on refused) or refused.
    #[arg(long, env = "PORTCULLIS_DNS_DENY_RCODE", default_value = "nxdomain", value_parser = crate::dnsgate::parse_deny_rcode)]
    pub dns_deny_rcode: hickory_proto::op::ResponseCode,
    /// Most addresses the command may learn for one DNS name; over it the
    /// least recently learned one without a live connection is forgotten.
    #[arg(long, env = "PORTCULLIS_MAX_IPS_PER_NAME", default_value_t = 1000,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_ips_per_name: usize,
    /// Most DNS names the command may hold learned addresses for; over it
    /// the least recently used name without a live connection is forgotten.
    #[arg(long = "max-names", env = "PORTCULLIS_MAX_NAMES", default_value_t = 10_000,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_names: usize,
    /// Name of the endpoint in logs (default: exec-<pid>).
    #[arg(long, env = "PORTCULLIS_NAME")]
    pub name: Option<String>,
    /// Run the command in this network namespace (e.g. /run/netns/pod),
    /// with the files of /etc/netns/<name>/ over /etc/ as `ip netns exec`
    /// does (resolv.conf). Use this rather than `nsenter`/`ip netns exec`
    /// inside the command: those need capabilities the command does not get.
    #[arg(long, env = "PORTCULLIS_NETNS", value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// Run the command as this user (name or uid; its primary group and
    /// groups) instead of the caller. A command of another user cannot
    /// signal or trace the agent.
    #[arg(long, env = "PORTCULLIS_USER", value_name = "USER")]
    pub user: Option<String>,
    /// Keep every capability. By default the command (and all it starts)
    /// runs without the ones that leave enforcement: CAP_NET_RAW (packet
    /// sockets are not seen by cgroup hooks), CAP_NET_ADMIN (TUN devices,
    /// forwarding), CAP_SYS_ADMIN (namespaces, mounts, BPF), CAP_BPF,
    /// CAP_PERFMON, CAP_SYS_PTRACE, CAP_SYS_MODULE, CAP_SYS_RAWIO and
    /// CAP_SETPCAP, and with no_new_privs set; it also stays in its own
    /// cgroup namespace, so it cannot move itself out of its cgroup.
    #[arg(long, env = "PORTCULLIS_KEEP_CAPS")]
    pub keep_caps: bool,
    /// Also judge every packet on the veth of the pod's network namespace
    /// (--veth-pod, else --netns), at its host-side end, which lives in
    /// this namespace (e.g. the node's, /proc/1/ns/net). Packet sockets,
    /// TUN devices with forwarding and sandboxes whose traffic no socket
    /// hook sees (gVisor, Kata) are enforced there; DNS on that wire is
    /// served by the agent.
    #[arg(long, env = "PORTCULLIS_VETH_NETNS", value_name = "PATH")]
    pub veth_netns: Option<PathBuf>,
    /// The network namespace whose veth --veth-netns judges, when the
    /// command does not run in it (default: --netns).
    #[arg(long, env = "PORTCULLIS_VETH_POD", value_name = "PATH", requires = "veth_netns")]
    pub veth_pod: Option<PathBuf>,
    /// Enforce on the veth only (no cgroup hooks): what a gVisor or Kata
    /// pod gets.
    #[arg(long, env = "PORTCULLIS_VETH_ONLY", requires = "veth_netns")]
    pub veth_only: bool,
    /// Answer `portcullis explain --state-dir DIR --endpoint NAME` on
    /// DIR/agent.sock while the command runs (root only; exec hands
    /// nothing over to another agent).
    #[arg(long, env = "PORTCULLIS_EXEC_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Node configuration (endpoints and their policies).
    #[arg(long, env = "PORTCULLIS_CONFIG", value_name = "FILE")]
    pub config: PathBuf,
    /// Pin programs, links and maps here (on bpffs): enforcement outlives
    /// the agent, and the next agent adopts it. Without it, enforcement
    /// ends when the agent exits.
    #[arg(long, env = "PORTCULLIS_PIN_PATH", value_name = "DIR")]
    pub pin_path: Option<PathBuf>,
    /// With --pin-path: the handover socket and learned-state snapshot
    /// (a host directory that survives the agent's pod).
    #[arg(long, env = "PORTCULLIS_STATE_DIR", value_name = "DIR", default_value = "/var/run/portcullis")]
    pub state_dir: PathBuf,
    /// Serve Prometheus metrics on this address (overrides the config's
    /// metricsAddr), e.g. 0.0.0.0:9464.
    #[arg(long, env = "PORTCULLIS_METRICS_ADDR", value_name = "IP:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// How long a gone pod's series stay on `/metrics` with their final
    /// values (so the last increments are scraped), e.g. 60s.
    #[arg(long, env = "PORTCULLIS_METRICS_POD_GRACE", value_name = "DURATION", default_value = "60s",
        value_parser = humantime::parse_duration)]
    pub metrics_pod_grace: std::time::Duration,
    /// The blocked log's files (the config's `log:` names the file itself).
    #[command(flatten)]
    pub blocked_log: crate::blocked::BlockedLogArgs,
    /// This node's name in the records (the blocked log's `node`, the
    /// ClickHouse rows'). Default: the host name.
    #[arg(long, env = "PORTCULLIS_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    #[command(flatten)]
    pub clickhouse: crate::clickhouse::ClickHouseArgs,
}

#[derive(Debug, Args)]
pub struct UnpinArgs {
    /// The --pin-path `run` used.
    #[arg(long, env = "PORTCULLIS_PIN_PATH", value_name = "DIR")]
    pub pin_path: PathBuf,
    /// The --state-dir `run` used (its snapshot is removed too).
    #[arg(long, env = "PORTCULLIS_STATE_DIR", value_name = "DIR", default_value = "/var/run/portcullis")]
    pub state_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Policy file (same as --policy).
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
}

const EXPLAIN_EXAMPLES: &str = "\
Examples:
  portcullis explain -n ws-acme --pod agent-7f9c api.openai.com:443
  portcullis explain -n ws-acme --pod agent-7f9c 169.254.169.254:80 -o json
  portcullis explain --endpoint worker --state-dir /var/run/portcullis '[2001:db8::5]:8443'
  portcullis explain --state-dir /tmp/exec-state 203.0.113.7 --protocol 47   (a `portcullis exec --state-dir`)

Exit status: 0 allowed (also once the name is looked up), 1 blocked (or, in audit
mode, let through only because the endpoint audits), 2 a bad question.";

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// HOST, HOST:PORT, an IP, or [IPV6]:PORT.
    pub target: String,
    /// The pod's namespace.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// The pod's name (not needed when the agent enforces one endpoint,
    /// as `exec` does).
    #[arg(long)]
    pub pod: Option<String>,
    /// An endpoint by name (`run` configs) instead of a pod.
    #[arg(long, conflicts_with = "pod")]
    pub endpoint: Option<String>,
    /// Port when TARGET has none.
    #[arg(long, default_value = "443")]
    pub port: u16,
    /// tcp, udp, sctp, icmp (ICMPv6 to an IPv6 address; no port) or
    /// another IP protocol by number (no port).
    #[arg(long, default_value = "tcp")]
    pub protocol: String,
    /// The agent's state directory (its socket is there).
    #[arg(long, env = "PORTCULLIS_STATE_DIR", value_name = "DIR", default_value = "/var/run/portcullis")]
    pub state_dir: PathBuf,
    /// `text` or `json`.
    #[arg(short = 'o', long, default_value = "text", value_parser = ["text", "json"])]
    pub output: String,
}
