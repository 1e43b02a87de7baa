//! Series of pods that are gone, for a grace period: their final values
//! keep being reported for about a minute (`--metrics-pod-grace`), so the
//! increments between the last scrape and the pod's end (often the burst
//! that got it killed) are scraped, and then they go (Prometheus marks them
//! stale). Hubble does the same.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use super::{families::PodLabels, pods::PodValues};
use crate::util::lock;

/// Default grace period.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Departed {
    grace: Duration,
    /// (when it went, labels, final counters). Written when an endpoint is
    /// removed, read by scrapes; the DNS and connect paths never touch it.
    gone: Mutex<Vec<(Instant, PodLabels, PodValues)>>,
}

impl Default for Departed {
    fn default() -> Self {
        Self::new(DEFAULT_GRACE)
    }
}

impl Departed {
    pub fn new(grace: Duration) -> Self {
        Self { grace, gone: Mutex::default() }
    }

    /// A pod's endpoint went: its final values (gauges dropped).
    pub fn depart(&self, labels: PodLabels, mut values: PodValues, now: Instant) {
        values.gauges = None;
        let mut gone = lock(&self.gone);
        // Two endpoints under one pod's labels: one entry, summed.
        match gone.iter_mut().find(|(_, l, _)| *l == labels) {
            Some((at, _, v)) => {
                v.add(&values);
                *at = now;
            }
            None => gone.push((now, labels, values)),
        }
    }

    /// What is still reported at `now` (older entries are dropped).
    pub fn current(&self, now: Instant) -> Vec<(PodLabels, PodValues)> {
        let mut gone = lock(&self.gone);
        gone.retain(|(at, _, _)| now.saturating_duration_since(*at) < self.grace);
        gone.iter().map(|(_, l, v)| (l.clone(), v.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::pods::PodGauges;

    #[test]
    fn kept_for_the_grace_period_then_dropped() {
        let d = Departed::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let pod = PodLabels { source_namespace: "ns".into(), source_pod: "p".into() };
        let mut v = PodValues { gauges: Some(PodGauges::default()), ..Default::default() };
        v.flow.egress_bytes = 5;
        d.depart(pod.clone(), v, t0);
        let now = d.current(t0 + Duration::from_secs(59));
        assert_eq!(now.len(), 1);
        assert_eq!(now[0].0, pod);
        assert_eq!(now[0].1.flow.egress_bytes, 5);
        assert!(now[0].1.gauges.is_none(), "a gone pod has no gauges");
        assert!(d.current(t0 + Duration::from_secs(60)).is_empty());
    }
}
