//! The reconciler: from the API objects on record to the endpoints in
//! force, level-based (every pass starts from the whole picture, so a
//! missed event is repaired by the next pass). Pods whose cgroup or
//! resolvers are not found yet are looked at again every tick: kubelet
//! creates the cgroup after the API event, and the pod's resolv.conf is
//! readable once a container runs.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::Instant,
};

use tracing::{info, warn};

use super::{
    desired::{ServiceIps, Settings, Want, desired},
    podcgroup::Kubepods,
    pods::{Gap, PodInfo},
    policies::PolicyBook,
    resolved::{self, Resolved},
    veths::{PodNet, PodVeths},
};
use crate::{
    agent::Agent,
    enforcer::Mode,
    policy::model::parse_dns_server,
    reconcile::{self, AttachEach, Enforced, Plan, Prepared},
    telemetry::k8s::{K8sStats, PodRow},
};

/// What the watches hold, copied out of their stores.
#[derive(Default)]
pub struct Snapshot {
    pub pods: Vec<PodInfo>,
    pub namespaces: HashMap<String, BTreeMap<String, String>>,
    pub policies: Vec<super::policies::Decoded<super::crd::EgressPolicy>>,
    pub cluster_policies: Vec<super::policies::Decoded<super::crd::ClusterEgressPolicy>>,
    pub services: ServiceIps,
    /// Every watch has delivered its first full list: what is not on
    /// record is gone (before that, nothing is removed).
    pub synced: bool,
}

pub struct Node {
    pub kubepods: Kubepods,
    pub settings: Settings,
    pub cluster_dns: Vec<SocketAddr>,
    pub state_dir: Option<PathBuf>,
    pub stats: Arc<K8sStats>,
    book: PolicyBook,
    pub enforced: Enforced,
    /// The resolved form of each enforced endpoint, by cgroup id (saved).
    resolved: HashMap<u64, Resolved>,
    /// The node's resolvers (`dnsPolicy: Default`, and hostNetwork pods
    /// with ClusterFirst): the agent's own resolv.conf, read at start (the
    /// DaemonSet is hostNetwork, so kubelet wrote the node's there).
    pub node_dns: Vec<SocketAddr>,
    /// The Service whose ClusterIPs are the cluster's DNS when kubelet's
    /// `clusterDNS` is not given (`--cluster-dns-service`).
    pub cluster_dns_service: Option<(String, String)>,
    /// The cluster's DNS of this pass.
    pass_cluster_dns: Vec<SocketAddr>,
    /// When each pod UID was first seen without its policy in force.
    waiting_since: HashMap<String, Instant>,
    /// The cgroups (pod UID, QoS class) the pods waiting in the last pass
    /// wait for; API objects need no watching: their arrival pokes a pass.
    waiting: Vec<(String, Option<String>)>,
    /// What was last logged of each pod's gaps (a change is logged again).
    logged_gaps: HashMap<String, Vec<Gap>>,
    /// The veth programs on the pods' veths (`veths.rs`), when on.
    pub veths: Option<PodVeths>,
    /// The pods' network facts of the last pass, by UID.
    pod_nets: HashMap<String, PodNet>,
    /// The rows of the last pass, before the veths closed any gap.
    rows: Vec<PodRow>,
    synced: bool,
    /// Pods whose veth was not found in the last sync.
    pub veths_waiting: usize,
}

impl Node {
    pub fn new(kubepods: Kubepods, settings: Settings, cluster_dns: Vec<SocketAddr>, state_dir: Option<PathBuf>) -> Self {
        Self {
            kubepods,
            settings,
            cluster_dns,
            state_dir,
            stats: Arc::default(),
            book: PolicyBook::default(),
            enforced: Enforced::new(),
            resolved: HashMap::new(),
            node_dns: Vec::new(),
            cluster_dns_service: None,
            pass_cluster_dns: Vec::new(),
            waiting_since: HashMap::new(),
            waiting: Vec::new(),
            logged_gaps: HashMap::new(),
            veths: None,
            pod_nets: HashMap::new(),
            rows: Vec::new(),
            synced: false,
            veths_waiting: 0,
        }
    }

    /// Attaches the veth programs to enforced pods' veths that have none
    /// yet, then reports every pod's gaps (what the veth closes, or that it
    /// is not found yet). Returns how many pods' veths are still waiting.
    pub fn sync_veths(&mut self, agent: &mut Agent) -> usize {
        let mut waiting = 0;
        let mut attached = HashSet::new();
        if let Some(v) = self.veths.as_mut() {
            waiting = v.sync(agent, &self.enforced, &self.resolved, &self.pod_nets);
            attached = v.attached_uids(&self.resolved).into_iter().map(str::to_owned).collect();
        }
        let on = self.veths.is_some();
        let uids: HashMap<(String, String), String> =
            self.resolved.values().map(|r| ((r.namespace.clone(), r.pod.clone()), r.uid.clone())).collect();
        let mut rows = self.rows.clone();
        for row in &mut rows {
            let uid = uids.get(&(row.namespace.clone(), row.pod.clone()));
            let net = uid.and_then(|u| self.pod_nets.get(u));
            if row.mode == Mode::Exempt || !on || net.is_none_or(|n| n.host_network) {
                continue;
            }
            if uid.is_some_and(|u| attached.contains(u)) {
                row.gaps.retain(|g| !g.closed_by_veth());
            } else if !row.gaps.contains(&Gap::CgroupNotFound) {
                row.gaps.push(Gap::VethNotFound);
            }
            row.gaps.sort_unstable();
        }
        for row in &rows {
            if let Some(uid) = uids.get(&(row.namespace.clone(), row.pod.clone())) {
                self.report_gaps(uid, &format!("{}/{}", row.namespace, row.pod), row.mode, &row.gaps);
            }
        }
        self.stats.set_pods(rows, self.synced);
        waiting
    }

    /// Whether a cgroup a waiting pod waits for is there now (cheap: a
    /// few `stat`s per waiting pod): then a pass is due.
    pub fn wait_over(&self) -> bool {
        self.waiting.iter().any(|(uid, qos)| self.kubepods.find_pod(uid, qos.as_deref()).is_some())
    }

    /// What is in force for `cgroup`, to carry into the next set as is.
    fn current(&self, cgroup: u64) -> Option<(Prepared, Resolved)> {
        Some((self.enforced.get(&cgroup)?.1.clone(), self.resolved.get(&cgroup)?.clone()))
    }

    /// Enforces `r` as is (start-up: the agent's own pod, the endpoints
    /// saved by the previous agent).
    pub fn restore(&mut self, agent: &mut Agent, r: Resolved) -> anyhow::Result<()> {
        let p = r.prepare()?;
        let id = reconcile::add(agent, &p, AttachEach::Parent)?;
        self.resolved.insert(p.cgroup_id, r);
        self.enforced.insert(p.cgroup_id, (id, p));
        Ok(())
    }

    /// One pass: desired endpoints from `snap`, found on disk, compiled,
    /// and the difference applied. Returns how many pods still wait for
    /// their cgroup or resolvers (look again soon).
    pub fn reconcile(&mut self, agent: &mut Agent, snap: &Snapshot) -> usize {
        if !snap.synced {
            // Nothing is applied from a partial picture: pods listed before
            // their policies or namespaces would lose allowances, or drop
            // to audit when only an audit policy has listed yet. Pods keep
            // what they have (restored ones too); new ones stay denied.
            return 0;
        }
        let started = Instant::now();
        self.pod_nets = snap
            .pods
            .iter()
            .map(|p| {
                (
                    p.uid.clone(),
                    PodNet {
                        host_network: p.host_network,
                        ips: p.ips.clone(),
                        sandboxed: p.gaps.contains(&Gap::SandboxedRuntime),
                    },
                )
            })
            .collect();
        self.pass_cluster_dns = self
            .cluster_dns_service
            .as_ref()
            .and_then(|k| snap.services.get(k))
            .map(|ips| ips.iter().map(|ip| SocketAddr::new(*ip, 53)).collect())
            .unwrap_or_default();
        let policies_changed = self.book.update(&snap.policies, &snap.cluster_policies);
        self.stats.set_invalid(self.book.problems());
        let wants = desired(&snap.pods, &snap.namespaces, &self.book, &snap.services, &self.settings);
        let mut next: Vec<(Prepared, Resolved)> = Vec::with_capacity(wants.len());
        let mut rows = Vec::with_capacity(wants.len());
        let mut pending = 0;
        self.waiting.clear();
        let by_uid: HashMap<String, u64> = self.resolved.iter().map(|(c, r)| (r.uid.clone(), *c)).collect();
        for w in &wants {
            if !snap.namespaces.contains_key(&w.pod.namespace) {
                // Its namespace (labels: which cluster policies select it)
                // is not on record yet: keep what it has; a new pod stays
                // denied until the namespace arrives.
                next.extend(by_uid.get(&w.pod.uid).and_then(|c| self.current(*c)));
                continue;
            }
            let mut gaps = w.pod.gaps.clone();
            let mut waiting = false;
            match self.resolve(w) {
                Ok((r, dns_pending)) => match r.prepare() {
                    Ok(p) => {
                        waiting |= dns_pending;
                        next.push((p, r));
                    }
                    Err(e) => {
                        // Keeps what it had (if anything): a union the
                        // kernel cannot hold changes nothing enforced.
                        warn!(pod = %format!("{}/{}", w.pod.namespace, w.pod.name), error = %format!("{e:#}"),
                            "the pod's policies do not compile together; it keeps what it had (deny all if new)");
                        // Kept only in the mode now wanted: a pod must not
                        // stay in audit (allow-all) because the union that
                        // enforces it does not compile.
                        let kept = by_uid.get(&w.pod.uid).and_then(|c| self.current(*c)).filter(|(p, _)| p.mode == w.mode);
                        if let Some(k) = kept {
                            next.push(k);
                        } else {
                            let mut deny = r;
                            deny.spec = crate::policy::PolicySpec::default();
                            deny.spec.dns.servers = Some(Vec::new());
                            deny.origins.clear();
                            next.extend(deny.prepare().ok().map(|p| (p, deny)));
                        }
                    }
                },
                Err(()) => {
                    gaps.push(Gap::CgroupNotFound);
                    waiting = true;
                    self.waiting.push((w.pod.cgroup_uid.clone(), w.pod.qos.clone()));
                }
            }
            if waiting {
                pending += 1;
                self.waiting_since.entry(w.pod.uid.clone()).or_insert(started);
            } else if let Some(t) = self.waiting_since.remove(&w.pod.uid) {
                self.stats.observe_time_to_enforce(started.duration_since(t));
            }
            if w.mode == Mode::Exempt {
                gaps.clear();
            }
            gaps.sort_unstable();
            gaps.dedup();
            if self.veths.is_none() {
                self.report_gaps(&w.pod.uid, &format!("{}/{}", w.pod.namespace, w.pod.name), w.mode, &gaps);
            }
            rows.push(PodRow {
                namespace: w.pod.namespace.clone(),
                pod: w.pod.name.clone(),
                mode: w.mode,
                gaps,
                policies: w.policies.len(),
                unresolved_services: w.unresolved.len(),
                capped_services: w.capped.clone(),
            });
        }
        // The agent's own pod is exempt whatever the API says (before its
        // object is listed, or if the downward API's UID is not on record).
        let own = self.settings.own_pod.as_deref();
        let own_cgroup = self.resolved.iter().find(|(_, r)| Some(r.uid.as_str()) == own && r.mode == Mode::Exempt.as_str());
        if let Some(c) = own_cgroup.map(|(c, _)| *c)
            && !next.iter().any(|(p, _)| p.cgroup_id == c)
        {
            next.extend(self.current(c));
        }
        let live: HashSet<&str> = wants.iter().map(|w| w.pod.uid.as_str()).collect();
        self.waiting_since.retain(|uid, _| live.contains(uid.as_str()));
        self.logged_gaps.retain(|uid, _| live.contains(uid.as_str()));
        let (next, next_resolved): (Vec<Prepared>, HashMap<u64, Resolved>) = next
            .into_iter()
            .map(|(p, r)| {
                let c = p.cgroup_id;
                (p, (c, r))
            })
            .unzip();
        let plan = Plan::new(&self.enforced, next);
        if !plan.is_empty() {
            let (added, changed_n, removed) = (plan.add.len(), plan.change.len(), plan.remove.len());
            let removed_ids: Vec<u64> = plan.remove.iter().map(|(_, c)| *c).collect();
            if let Err(e) = reconcile::apply(agent, &mut self.enforced, plan, AttachEach::Parent) {
                warn!(error = %format!("{e:#}"), "applying part of the desired endpoints failed; those keep what they had");
            }
            for c in removed_ids.iter().filter(|c| !self.enforced.contains_key(c)) {
                self.resolved.remove(c);
            }
            for (c, r) in next_resolved {
                if self.enforced.contains_key(&c) {
                    self.resolved.insert(c, r);
                }
            }
            info!(
                added,
                changed = changed_n,
                removed,
                pending,
                policies_changed,
                ms = started.elapsed().as_millis() as u64,
                "endpoints reconciled"
            );
            self.save();
        }
        self.synced = snap.synced;
        if self.veths.is_some() {
            self.rows = rows;
            self.veths_waiting = self.sync_veths(agent);
        } else {
            self.stats.set_pods(rows, snap.synced);
        }
        pending
    }

    /// Logs what cannot be enforced of a pod, when that changes.
    fn report_gaps(&mut self, uid: &str, pod: &str, mode: Mode, gaps: &[Gap]) {
        if self.logged_gaps.get(uid).is_some_and(|g| g == gaps) || (gaps.is_empty() && !self.logged_gaps.contains_key(uid)) {
            return;
        }
        if gaps.is_empty() {
            info!(pod = %pod, "the pod is fully enforced now");
        } else {
            let list: Vec<&str> = gaps.iter().map(|g| g.as_str()).collect();
            warn!(pod = %pod, gaps = %list.join(","), mode = mode.as_str(),
                "the pod cannot be fully enforced (portcullis_pod_enforcement_gaps)");
        }
        self.logged_gaps.insert(uid.to_owned(), gaps.to_vec());
    }

    /// The pod's cgroup, resolvers and final spec; `Err` if its cgroup is
    /// not there (yet). The flag: its resolvers are not known yet (DNS is
    /// denied until they are).
    fn resolve(&mut self, w: &Want) -> Result<(Resolved, bool), ()> {
        let dir = self.kubepods.find_pod(&w.pod.cgroup_uid, w.pod.qos.as_deref()).ok_or(())?;
        let cgroup_id = crate::cgroup::cgroup_id(&dir).map_err(|_| ())?;
        let mut spec = w.spec.clone();
        let mut dns_pending = false;
        if w.mode == Mode::Exempt {
            spec.dns.servers = Some(Vec::new());
        } else if spec.dns.servers.is_none() {
            let servers = self.pod_resolvers(w);
            dns_pending = servers.is_empty();
            spec.dns.servers = Some(servers.iter().map(SocketAddr::to_string).collect());
        }
        Ok((
            Resolved {
                namespace: w.pod.namespace.clone(),
                pod: w.pod.name.clone(),
                uid: w.pod.uid.clone(),
                cgroup: dir,
                cgroup_id,
                mode: w.mode.as_str().to_owned(),
                spec,
                origins: w.origins.iter().map(|(n, i)| (n.to_string(), *i)).collect(),
            },
            dns_pending,
        ))
    }

    /// What kubelet writes into the pod's resolv.conf, from trusted
    /// inputs: `dnsConfig.nameservers` (`dnsPolicy: None`, from the API),
    /// the cluster's DNS for ClusterFirst (kubelet's `clusterDNS`:
    /// `--cluster-dns`, kubelet's config file, else the ClusterIPs of
    /// `--cluster-dns-service`), the node's for `Default`. Empty if not
    /// known yet (DNS denied until a pass knows it).
    fn pod_resolvers(&self, w: &Want) -> Vec<SocketAddr> {
        if let Some(list) = &w.pod.nameservers {
            return list.iter().filter_map(|s| parse_dns_server(s).ok()).collect();
        }
        if !w.pod.cluster_first {
            return self.node_dns.clone();
        }
        if self.cluster_dns.is_empty() { self.pass_cluster_dns.clone() } else { self.cluster_dns.clone() }
    }

    fn save(&self) {
        let Some(dir) = &self.state_dir else { return };
        let mut all: Vec<Resolved> = self.resolved.values().cloned().collect();
        all.sort_by(|a, b| (&a.namespace, &a.pod).cmp(&(&b.namespace, &b.pod)));
        if let Err(e) = resolved::save(dir, &all) {
            warn!(error = %format!("{e:#}"), "saving the enforced pods failed; a restart without the API server would deny them");
        }
    }
}
