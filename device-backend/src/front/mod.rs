//! vhost-user front (see lib.rs).
