//! Every test of cli.rs once more, with every `vsicctl` run the harness
//! makes going through vsicd's management socket (`--mgmt`) instead of the
//! PF's vhost-user socket: the same flows, refusals and status names.

#[path = "cli.rs"]
mod cli;
