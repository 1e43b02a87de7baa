//! The places of a TCP DNS gate's connections (`tcp`): at most `cap` at
//! once. Over the cap, the connection that has waited longest for its
//! client's next query makes room (it holds no query of anyone's); if
//! every one is in the middle of a query, there is no room.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use tokio::sync::Notify;

use crate::util::lock;

/// A gate's connections, and since when each has been waiting for its
/// client's next query (`None`: in the middle of one).
pub(super) struct Slots {
    cap: usize,
    next: u64,
    open: HashMap<u64, (Option<Instant>, Arc<Notify>)>,
}

/// A connection's place among its gate's `Slots`; given back when dropped.
pub(super) struct Slot {
    slots: Arc<Mutex<Slots>>,
    id: u64,
    /// Notified when the connection must close to make room.
    evict: Arc<Notify>,
}

impl Slots {
    pub(super) fn new(cap: usize) -> Self {
        Self { cap, next: 0, open: HashMap::new() }
    }

    /// A place for a new connection, which waits for its first query from
    /// now, and whether another connection was told to close to make room;
    /// `None` if the gate is full of connections in the middle of a query.
    pub(super) fn take(slots: &Arc<Mutex<Slots>>) -> Option<(Slot, bool)> {
        let (id, evict, evicted) = lock(slots).admit(Instant::now())?;
        Some((Slot { slots: slots.clone(), id, evict }, evicted))
    }

    fn admit(&mut self, now: Instant) -> Option<(u64, Arc<Notify>, bool)> {
        let full = self.open.len() >= self.cap;
        if full {
            let (_, id) = self.open.iter().filter_map(|(id, (since, _))| since.map(|t| (t, *id))).min()?;
            if let Some((_, evict)) = self.open.remove(&id) {
                evict.notify_one();
            }
        }
        self.next += 1;
        let evict = Arc::new(Notify::new());
        self.open.insert(self.next, (Some(now), evict.clone()));
        Some((self.next, evict, full))
    }

    fn set_idle(&mut self, id: u64, since: Option<Instant>) {
        if let Some(s) = self.open.get_mut(&id) {
            s.0 = since;
        }
    }
}

impl Slot {
    /// Waiting for the client's next query (room can be made by closing
    /// it), or in the middle of one.
    pub(super) fn idle(&self, idle: bool) {
        lock(&self.slots).set_idle(self.id, idle.then(Instant::now));
    }

    /// Completes once the connection must close to make room (at once if
    /// it was told so already).
    pub(super) async fn evicted(&self) {
        self.evict.notified().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.slots).open.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Whether `n` was notified (without waiting).
    fn notified(n: &Notify) -> bool {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async { tokio::time::timeout(Duration::ZERO, n.notified()).await.is_ok() })
    }

    #[test]
    fn up_to_the_cap_every_connection_gets_a_place_then_one_must_make_room() {
        let mut s = Slots::new(3);
        let t0 = Instant::now();
        for i in 0..3 {
            let (_, evict, evicted) = s.admit(t0 + ms(i)).unwrap();
            assert!(!evicted);
            assert!(!notified(&evict));
        }
        assert_eq!(s.open.len(), 3);
        assert!(s.admit(t0 + ms(3)).unwrap().2, "the fourth closes one");
        assert_eq!(s.open.len(), 3);
    }

    #[test]
    fn over_the_cap_the_longest_idle_connection_makes_room() {
        let mut s = Slots::new(3);
        let t0 = Instant::now();
        let a = s.admit(t0).unwrap();
        let b = s.admit(t0 + ms(1)).unwrap();
        let c = s.admit(t0 + ms(2)).unwrap();
        // `a` is in the middle of a query: not idle, stays.
        s.set_idle(a.0, None);
        let (d, _, evicted) = s.admit(t0 + ms(3)).unwrap();
        assert!(evicted);
        assert!(notified(&b.1), "b waited longest");
        assert!(!notified(&a.1) && !notified(&c.1));
        assert!(s.open.contains_key(&a.0) && s.open.contains_key(&c.0) && s.open.contains_key(&d));
        assert_eq!(s.open.len(), 3);
        // A flood of new connections only ever displaces idle ones.
        for i in 4..100 {
            assert!(s.admit(t0 + ms(i)).unwrap().2);
        }
        assert!(s.open.contains_key(&a.0));
        assert_eq!(s.open.len(), 3);
    }

    #[test]
    fn a_gate_full_of_connections_mid_query_has_no_room() {
        let mut s = Slots::new(2);
        let t0 = Instant::now();
        let ids: Vec<u64> = (0..2).map(|i| s.admit(t0 + ms(i)).unwrap().0).collect();
        for id in &ids {
            s.set_idle(*id, None);
        }
        assert!(s.admit(t0 + ms(5)).is_none());
        assert_eq!(s.open.len(), 2);
        // One finishes its query and waits again: it can make room.
        s.set_idle(ids[1], Some(t0 + ms(6)));
        assert!(s.admit(t0 + ms(7)).unwrap().2);
        assert!(!s.open.contains_key(&ids[1]));
    }

    #[test]
    fn a_closed_connection_gives_its_place_back() {
        let slots = Arc::new(Mutex::new(Slots::new(1)));
        let (slot, _) = Slots::take(&slots).unwrap();
        slot.idle(false);
        assert!(Slots::take(&slots).is_none(), "full, mid-query");
        drop(slot);
        let (_, evicted) = Slots::take(&slots).unwrap();
        assert!(!evicted, "the place was free");
    }
}
