//! The management commands, one module per family. A new family is a new
//! module with a `register(&mut Registry)` function plus one line in
//! [`FAMILIES`]; nothing else changes.

use super::registry::Registry;

mod admin;
mod fault;
mod model;
mod power;
mod query;
mod stats;
mod trace;

/// Every command family's registration function. A new family: one line
/// here (and its `mod` line above).
const FAMILIES: &[fn(&mut Registry)] = &[
    query::register,
    admin::register,
    stats::register,
    fault::register,
    trace::register,
    power::register,
    model::register,
];

/// The table of every command.
pub fn registry() -> Registry {
    let mut r = Registry::default();
    for register in FAMILIES {
        register(&mut r);
    }
    r
}

#[cfg(test)]
mod tests {
    /// Building the table panics (debug assertion) on a name registered
    /// twice; every name is lower-case with dashes.
    #[test]
    fn every_command_registered_once_with_a_plain_name() {
        let r = super::registry();
        assert!(r.all().count() >= 2);
        for c in r.all() {
            assert!(
                c.name
                    .chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch == '-'),
                "{}",
                c.name
            );
            assert!(!c.help.is_empty(), "{} has no help", c.name);
        }
    }
}
