//! sluice-net.
