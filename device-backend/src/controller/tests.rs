//! Controller-level tests.
