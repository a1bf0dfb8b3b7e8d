//! sluice-cluster.
