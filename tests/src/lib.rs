//! End-to-end tests of microsandbox's public API live in `tests/tests/`;
//! this crate has no code of its own.
