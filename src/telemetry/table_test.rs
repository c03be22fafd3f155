//! The metrics table in `telemetry.rs`'s docs, held to the metrics made there.

use std::collections::BTreeSet;

/// The names in the module docs' table, and the names this module makes metrics of.
fn documented_and_made() -> (BTreeSet<String>, BTreeSet<String>) {
    let source = include_str!("../telemetry.rs");
    let documented = source
        .lines()
        .filter_map(|line| line.strip_prefix("//! | `"))
        .filter_map(|row| row.split('`').next())
        .filter(|name| name.starts_with("meshless_"))
        .map(str::to_owned)
        .collect();
    let made = source
        .split("!(")
        .skip(1)
        .filter_map(|call| call.trim_start().strip_prefix('"'))
        .filter_map(|call| call.split('"').next())
        .filter(|name| name.starts_with("meshless_"))
        .map(str::to_owned)
        .collect();
    (documented, made)
}

#[test]
fn the_table_lists_every_metric_and_nothing_else() {
    let (documented, made) = documented_and_made();
    assert!(made.len() >= 17, "found only {made:?}");
    assert_eq!(documented, made);
}

#[test]
fn no_other_module_names_a_metric() {
    let elsewhere = [
        include_str!("../balance/set/mod.rs"),
        include_str!("../server/accept.rs"),
        include_str!("../client/call.rs"),
        include_str!("../events/hub/mod.rs"),
        include_str!("../events/stream.rs"),
        include_str!("../events/observer/metrics.rs"),
    ];
    for source in elsewhere {
        assert!(!source.contains("metrics::counter!"));
        assert!(!source.contains("metrics::gauge!"));
        assert!(!source.contains("metrics::histogram!"));
    }
}
