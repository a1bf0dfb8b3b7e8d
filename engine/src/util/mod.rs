//! Small shard-local helpers shared by every crate (instead of micro-crates).

mod notify;

pub use notify::Notify;
