//! The soak of `cargo xtask soak` (`portcullis_tests::soak`), short: 3,000
//! new names through the DNS gates of `portcullis run`, half from one
//! endpoint, half spread over four. Every lookup is answered and the
//! learned entries stay within a names cap small enough to be reached
//! (500 per endpoint, with every name learned for 5 s at 1,000 lookups/s).
//! Memory is not judged here: the run is too short for a steady state
//! (`cargo xtask soak` does that).

use portcullis_tests::{portcullis_bin, require_root, soak};

#[test]
fn soak_smoke_every_new_name_resolves_within_the_caps() {
    if !require_root() {
        return;
    }
    let opts = soak::Options {
        names: 3_000,
        endpoints: 4,
        rate: 1_000.0,
        window: 32,
        dns_ttl: 5,
        min_ttl: 5,
        max_names: Some(500),
        warmup: 0.05,
        spread_from: 0.5,
        agent: portcullis_bin().unwrap(),
    };
    let out = soak::run(&opts, |s| eprintln!("{s:?}")).unwrap();
    let verdicts = out.verdicts();
    for (what, ok) in &verdicts[1..] {
        assert!(ok, "{what}");
    }
    // The cap was reached (and held): the bound is exercised, not idle.
    assert_eq!(out.peak_learned_ep, 500, "{out:?}");
    assert!(out.last().evicted > 0, "{out:?}");
    assert_eq!(out.last().sent, 3_000);
}
