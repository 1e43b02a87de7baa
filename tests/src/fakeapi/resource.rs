//! The resource table: which kinds the fake serves and at which paths.

/// One served resource type (an entry of the API server's discovery).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceDef {
    /// API group, `""` for the core group.
    pub group: String,
    pub version: String,
    /// Lower-case plural used in paths (`pods`).
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
    /// Built-in types come back from a real server without `apiVersion`/`kind`
    /// on list items; custom resources keep them. Clients must cope with both.
    pub builtin: bool,
}

impl ResourceDef {
    /// A namespaced or cluster-scoped resource; `builtin` is `true` for the
    /// core group and `*.k8s.io` groups.
    pub fn new(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        Self {
            group: group.to_owned(),
            version: version.to_owned(),
            plural: plural.to_owned(),
            kind: kind.to_owned(),
            namespaced,
            builtin: group.is_empty() || group.ends_with(".k8s.io"),
        }
    }

    /// `v1` or `group/version`, as in an object's `apiVersion`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// Does `name` (a kind or a plural, case-insensitive) denote this resource?
    pub(super) fn is_named(&self, name: &str) -> bool {
        self.plural.eq_ignore_ascii_case(name) || self.kind.eq_ignore_ascii_case(name)
    }
}

/// What a default server serves: the kinds the agent reads and writes.
pub fn default_resources() -> Vec<ResourceDef> {
    vec![
        ResourceDef::new("", "v1", "pods", "Pod", true),
        ResourceDef::new("", "v1", "namespaces", "Namespace", false),
        ResourceDef::new("", "v1", "services", "Service", true),
        ResourceDef::new("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", true),
        ResourceDef::new("", "v1", "nodes", "Node", false),
        ResourceDef::new("portcullis.dev", "v1alpha1", "egresspolicies", "EgressPolicy", true),
        ResourceDef::new("portcullis.dev", "v1alpha1", "clusteregresspolicies", "ClusterEgressPolicy", false),
        ResourceDef::new("events.k8s.io", "v1", "events", "Event", true),
    ]
}

/// The served resources, looked up by path or by object type.
#[derive(Clone, Debug)]
pub(super) struct Registry {
    defs: Vec<ResourceDef>,
}

impl Registry {
    pub(super) fn new(defs: Vec<ResourceDef>) -> Self {
        Self { defs }
    }

    pub(super) fn defs(&self) -> &[ResourceDef] {
        &self.defs
    }

    pub(super) fn get(&self, idx: usize) -> &ResourceDef {
        &self.defs[idx]
    }

    /// By path components: `group` is `""` under `/api`.
    pub(super) fn by_path(&self, group: &str, version: &str, plural: &str) -> Option<usize> {
        self.defs.iter().position(|d| d.group == group && d.version == version && d.plural == plural)
    }

    /// By an object's `apiVersion` and `kind`.
    pub(super) fn by_type(&self, api_version: &str, kind: &str) -> Option<usize> {
        self.defs.iter().position(|d| d.api_version() == api_version && d.kind == kind)
    }

    /// By a kind or plural; the first match wins, so the table order decides
    /// between groups that share a kind.
    pub(super) fn by_name(&self, name: &str) -> Option<usize> {
        self.defs.iter().position(|d| d.is_named(name))
    }

    /// Is `group/version` served at all (for discovery and 404s)?
    pub(super) fn serves_group_version(&self, group: &str, version: &str) -> bool {
        self.defs.iter().any(|d| d.group == group && d.version == version)
    }
}
