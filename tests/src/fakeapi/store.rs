//! Objects, the global resource version and the change history (etcd's role).
//!
//! Every write bumps one cluster-wide counter, as etcd's revision does, and is
//! remembered with the object's previous state. The history is what watches
//! replay and what lets a paged list be served at the snapshot of its first
//! page; [`Store::compact`] forgets it, which is what makes old resource
//! versions and continue tokens expire.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{Map, Value};

/// Where an object lives: resource (index into the registry), namespace
/// (`""` for cluster-scoped) and name. Ordered as etcd orders its keys, so
/// lists come back sorted by namespace, then name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Key {
    pub res: usize,
    pub ns: String,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Change {
    Added,
    Modified,
    Deleted,
}

/// One write. `object` is the new state (for a deletion: the last state with
/// the deletion's resource version, as a real DELETED event carries).
#[derive(Clone, Debug)]
pub(super) struct Record {
    pub rv: u64,
    pub key: Key,
    pub change: Change,
    pub object: Value,
    pub prev: Option<Value>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum StoreError {
    #[error("too old resource version: {asked} ({compacted})")]
    Expired { asked: u64, compacted: u64 },
    #[error("object already exists")]
    AlreadyExists,
    #[error("object not found")]
    NotFound,
    #[error("the object has been modified; please apply your changes to the latest version and try again")]
    Conflict,
}

/// A long run without compaction would grow without bound; past this many
/// records the oldest are forgotten, as the API server's etcd compactor does.
const HISTORY_CAP: usize = 100_000;

#[derive(Debug, Default)]
pub(super) struct Store {
    rv: u64,
    /// History holds every change with `rv > compacted`.
    compacted: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Record>,
    uids: u64,
}

impl Store {
    pub(super) fn rv(&self) -> u64 {
        self.rv
    }

    pub(super) fn compacted(&self) -> u64 {
        self.compacted
    }

    pub(super) fn get(&self, key: &Key) -> Option<&Value> {
        self.objects.get(key)
    }

    /// Insert or replace (the handle's `apply`): no optimistic-concurrency check.
    pub(super) fn put(&mut self, key: Key, obj: Value, namespaced: bool) -> Value {
        match self.objects.get(&key) {
            Some(_) => self.replace(key, obj, namespaced),
            None => self.insert(key, obj, namespaced),
        }
    }

    /// POST: fails if the key exists.
    pub(super) fn create(&mut self, key: Key, obj: Value, namespaced: bool) -> Result<Value, StoreError> {
        if self.objects.contains_key(&key) {
            return Err(StoreError::AlreadyExists);
        }
        Ok(self.insert(key, obj, namespaced))
    }

    /// PUT/PATCH: a `metadata.resourceVersion` in `obj` must match the stored
    /// one (optimistic concurrency); an absent one means "unconditionally".
    pub(super) fn update(&mut self, key: Key, obj: Value, namespaced: bool) -> Result<Value, StoreError> {
        let current = self.objects.get(&key).ok_or(StoreError::NotFound)?;
        if let Some(want) = obj.pointer("/metadata/resourceVersion").and_then(Value::as_str)
            && !want.is_empty()
            && Some(want) != current.pointer("/metadata/resourceVersion").and_then(Value::as_str)
        {
            return Err(StoreError::Conflict);
        }
        Ok(self.replace(key, obj, namespaced))
    }

    pub(super) fn remove(&mut self, key: &Key) -> Option<Value> {
        let prev = self.objects.remove(key)?;
        self.rv += 1;
        let mut last = prev.clone();
        set_meta(&mut last, "resourceVersion", Value::String(self.rv.to_string()));
        self.record(key.clone(), Change::Deleted, last.clone(), Some(prev));
        Some(last)
    }

    fn insert(&mut self, key: Key, mut obj: Value, namespaced: bool) -> Value {
        self.uids += 1;
        self.rv += 1;
        normalize(&mut obj, &key, namespaced);
        set_meta(&mut obj, "uid", Value::String(format!("00000000-0000-4000-8000-{:012x}", self.uids)));
        if obj.pointer("/metadata/creationTimestamp").is_none_or(Value::is_null) {
            set_meta(&mut obj, "creationTimestamp", Value::String(now_rfc3339()));
        }
        set_meta(&mut obj, "resourceVersion", Value::String(self.rv.to_string()));
        self.objects.insert(key.clone(), obj.clone());
        self.record(key, Change::Added, obj.clone(), None);
        obj
    }

    fn replace(&mut self, key: Key, mut obj: Value, namespaced: bool) -> Value {
        let Some(prev) = self.objects.get(&key).cloned() else { return self.insert(key, obj, namespaced) };
        normalize(&mut obj, &key, namespaced);
        // Identity and creation time are the server's, whatever the writer sent.
        for field in ["uid", "creationTimestamp", "resourceVersion"] {
            match prev.pointer(&format!("/metadata/{field}")) {
                Some(v) => set_meta(&mut obj, field, v.clone()),
                None => drop(obj.get_mut("metadata").and_then(Value::as_object_mut).and_then(|m| m.remove(field))),
            }
        }
        // A write that changes nothing does not bump the resource version
        // and emits no event, as with a real API server.
        if obj == prev {
            return prev;
        }
        self.rv += 1;
        set_meta(&mut obj, "resourceVersion", Value::String(self.rv.to_string()));
        self.objects.insert(key.clone(), obj.clone());
        self.record(key, Change::Modified, obj.clone(), Some(prev));
        obj
    }

    fn record(&mut self, key: Key, change: Change, object: Value, prev: Option<Value>) {
        self.history.push_back(Record { rv: self.rv, key, change, object, prev });
        while self.history.len() > HISTORY_CAP {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
    }

    /// Forget all history: every resource version before now expires.
    pub(super) fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    fn check_not_compacted(&self, rv: u64) -> Result<(), StoreError> {
        if rv < self.compacted { Err(StoreError::Expired { asked: rv, compacted: self.compacted }) } else { Ok(()) }
    }

    /// Changes of resource `res` after `after`, oldest first.
    pub(super) fn changes_since(&self, res: usize, after: u64) -> Result<Vec<Record>, StoreError> {
        self.check_not_compacted(after)?;
        let start = self.history.partition_point(|r| r.rv <= after);
        Ok(self.history.range(start..).filter(|r| r.key.res == res).cloned().collect())
    }

    /// The objects of `res` (in `ns` if given) as they were at `at` (now if
    /// `None`), in key order. Past states are rebuilt by undoing history, so
    /// they are only available back to the compaction point.
    pub(super) fn snapshot(&self, res: usize, ns: Option<&str>, at: Option<u64>) -> Result<Vec<Value>, StoreError> {
        let in_scope = |k: &Key| k.res == res && ns.is_none_or(|ns| k.ns == ns);
        let mut view: BTreeMap<&Key, &Value> = self.objects.iter().filter(|(k, _)| in_scope(k)).collect();
        if let Some(at) = at.filter(|&at| at < self.rv) {
            self.check_not_compacted(at)?;
            for r in self.history.iter().rev().take_while(|r| r.rv > at).filter(|r| in_scope(&r.key)) {
                match &r.prev {
                    Some(prev) => view.insert(&r.key, prev),
                    None => view.remove(&r.key),
                };
            }
        }
        Ok(view.into_values().cloned().collect())
    }

    /// Current objects of `res`, in key order.
    pub(super) fn objects(&self, res: usize) -> Vec<Value> {
        self.objects.iter().filter(|(k, _)| k.res == res).map(|(_, v)| v.clone()).collect()
    }
}

/// Make `metadata` agree with the key: name, and namespace only if namespaced.
fn normalize(obj: &mut Value, key: &Key, namespaced: bool) {
    set_meta(obj, "name", Value::String(key.name.clone()));
    if namespaced {
        set_meta(obj, "namespace", Value::String(key.ns.clone()));
    } else if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("namespace");
    }
}

/// Set `metadata.<field>`, creating `metadata` (and replacing a non-object
/// top level, which callers have already rejected) as needed.
pub(super) fn set_meta(obj: &mut Value, field: &str, v: Value) {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let Some(top) = obj.as_object_mut() else { return };
    let meta = top.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    if let Some(m) = meta.as_object_mut() {
        m.insert(field.to_owned(), v);
    }
}

/// RFC 3339 at second precision, as the API server writes timestamps.
fn now_rfc3339() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(now.as_second()).map_or_else(|_| now.to_string(), |t| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(name: &str) -> Key {
        Key { res: 0, ns: "default".into(), name: name.into() }
    }

    #[test]
    fn fakeapi_store_versions_history_and_snapshots() {
        let mut s = Store::default();
        let a = s.put(key("a"), json!({"metadata": {"name": "a"}, "spec": {"x": 1}}), true);
        assert_eq!(a["metadata"]["resourceVersion"], "1");
        assert_eq!(a["metadata"]["namespace"], "default");
        // no-op write: no new version
        let same = s.put(key("a"), json!({"metadata": {"name": "a"}, "spec": {"x": 1}}), true);
        assert_eq!(same["metadata"]["resourceVersion"], "1");
        let a2 = s.put(key("a"), json!({"metadata": {"name": "a"}, "spec": {"x": 2}}), true);
        assert_eq!(a2["metadata"]["resourceVersion"], "2");
        assert_eq!(a2["metadata"]["uid"], a["metadata"]["uid"]);
        s.put(key("b"), json!({"metadata": {"name": "b"}}), true);
        let gone = s.remove(&key("a")).unwrap();
        assert_eq!(gone["metadata"]["resourceVersion"], "4");
        assert_eq!(gone["spec"]["x"], 2);

        let at1 = s.snapshot(0, None, Some(1)).unwrap();
        assert_eq!(at1.len(), 1);
        assert_eq!(at1[0]["spec"]["x"], 1);
        assert_eq!(s.snapshot(0, None, None).unwrap().len(), 1);
        let changes: Vec<_> = s.changes_since(0, 1).unwrap().iter().map(|r| (r.rv, r.change)).collect();
        assert_eq!(changes, [(2, Change::Modified), (3, Change::Added), (4, Change::Deleted)]);

        s.compact();
        assert_eq!(s.changes_since(0, 3).unwrap_err(), StoreError::Expired { asked: 3, compacted: 4 });
        assert!(s.changes_since(0, 4).unwrap().is_empty());
        assert!(s.snapshot(0, None, Some(2)).is_err());
        let mut stale = s.get(&key("b")).unwrap().clone();
        stale["metadata"]["resourceVersion"] = json!("1");
        assert_eq!(s.update(key("b"), stale, true).unwrap_err(), StoreError::Conflict);
    }
}
