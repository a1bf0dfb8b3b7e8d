//! Limits of the network layer. Units in names; each says why it has its value.

/// Largest admin HTTP request head. Scrapers send a few hundred bytes; 8 KiB is generous and
/// bounds memory per admin connection.
pub const ADMIN_REQUEST_BYTES_MAX: usize = 8 << 10;
