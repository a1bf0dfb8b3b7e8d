//! The Rust client library of the native protocol: producer, consumer and admin.

pub mod partitioner;
