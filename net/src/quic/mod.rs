//! QUIC transport of the native protocol: quinn on the shard runtime, TLS, and endpoints.
//!
//! Main items: [`runtime::ShardRuntime`] (quinn on a glommio shard), [`tls`] (rustls and
//! transport configuration), [`server_endpoint`] / [`client_endpoint`] (a shard's endpoint on
//! its own UDP socket) and [`connect`] (a handshake whose failures read as clear sentences).
//!
//! Every shard runs its own endpoint on its own port; an endpoint and its connections are
//! shard-local (`runtime` explains why and checks it). Must not depend on: the native frame
//! format or anything above the transport.

pub mod runtime;
pub mod tls;

use std::net::SocketAddr;

use quinn::{ConnectionError, TransportErrorCode};

use self::runtime::{ShardRuntime, bind_udp_socket};
use crate::limits::QUIC_MAX_UDP_PAYLOAD_BYTES;

/// TLS alert numbers (RFC 8446 §6) that QUIC carries as `CRYPTO_ERROR` codes.
mod alert {
    pub const BAD_CERTIFICATE: u8 = 42;
    pub const UNSUPPORTED_CERTIFICATE: u8 = 43;
    pub const CERTIFICATE_EXPIRED: u8 = 45;
    pub const CERTIFICATE_UNKNOWN: u8 = 46;
    pub const UNKNOWN_CA: u8 = 48;
    pub const CERTIFICATE_REQUIRED: u8 = 116;
    pub const NO_APPLICATION_PROTOCOL: u8 = 120;
}

/// Why an endpoint could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// The UDP socket could not be bound or set up.
    #[error("cannot bind the QUIC socket on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Starts a server endpoint on `addr` on the calling shard. It can also open connections.
pub fn server_endpoint(
    addr: SocketAddr,
    config: quinn::ServerConfig,
) -> Result<quinn::Endpoint, EndpointError> {
    endpoint(addr, Some(config))
}

/// Starts a client-only endpoint on `addr` (usually port 0) on the calling shard.
pub fn client_endpoint(addr: SocketAddr) -> Result<quinn::Endpoint, EndpointError> {
    endpoint(addr, None)
}

fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> Result<quinn::Endpoint, EndpointError> {
    let bind_error = |source| EndpointError::Bind { addr, source };
    let (socket, sizes) = bind_udp_socket(addr).map_err(bind_error)?;
    tracing::debug!("QUIC socket on {addr} has kernel buffers {sizes:?}");
    // Peers learn from this how large a datagram we accept; quinn sizes its receive buffers
    // by it (allocated zeroed, so only the pages datagrams land in become resident).
    let mut endpoint_config = quinn::EndpointConfig::default();
    endpoint_config
        .max_udp_payload_size(QUIC_MAX_UDP_PAYLOAD_BYTES)
        .expect("QUIC_MAX_UDP_PAYLOAD_BYTES is within QUIC's 1200..=65527");
    quinn::Endpoint::new(endpoint_config, server, socket, ShardRuntime::new()).map_err(bind_error)
}

/// Why a connection to a broker could not be established.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// quinn refused to start the attempt (bad server name, endpoint closing, ...).
    #[error("cannot connect to broker {broker}: {source}")]
    Start {
        /// The broker address.
        broker: SocketAddr,
        /// What quinn said.
        source: quinn::ConnectError,
    },
    /// The peer does not offer ALPN `sluice/1`.
    #[error(
        "broker {broker} does not speak the sluice/1 protocol (TLS ALPN mismatch): is this the \
         QUIC port of a compatible Sluice broker?"
    )]
    AlpnMismatch {
        /// The broker address.
        broker: SocketAddr,
    },
    /// We do not trust the broker's certificate.
    #[error(
        "the certificate of broker {broker} is not trusted ({reason}): pass --ca with the \
         certificate of the authority that signed it"
    )]
    UntrustedBroker {
        /// The broker address.
        broker: SocketAddr,
        /// What the TLS layer said.
        reason: String,
    },
    /// The broker rejected our client certificate, or wanted one we did not send.
    #[error(
        "broker {broker} rejected the client certificate ({reason}): it requires mutual TLS \
         with a certificate signed by its --ca"
    )]
    ClientRejected {
        /// The broker address.
        broker: SocketAddr,
        /// What the broker said.
        reason: String,
    },
    /// The handshake or the connection failed otherwise (timeout, refused, other TLS error).
    #[error("connection to broker {broker} failed: {source}")]
    Connection {
        /// The broker address.
        broker: SocketAddr,
        /// What quinn said.
        source: ConnectionError,
    },
}

/// Connects to the broker at `broker` and completes the handshake, turning TLS failures into
/// errors that say what to fix.
///
/// `server_name` is checked against the broker's certificate when verifying against `--ca`
/// (use the name or IP the certificate was issued for; `"localhost"` for a loopback broker).
pub async fn connect(
    endpoint: &quinn::Endpoint,
    broker: SocketAddr,
    server_name: &str,
    config: quinn::ClientConfig,
) -> Result<quinn::Connection, ConnectError> {
    let connecting = endpoint
        .connect_with(config, broker, server_name)
        .map_err(|source| ConnectError::Start { broker, source })?;
    connecting
        .await
        .map_err(|source| ConnectError::from_connection(broker, source))
}

impl ConnectError {
    /// Explains why a connection to `broker` failed or closed.
    ///
    /// [`connect`] uses it for handshake failures. Callers should also use it when a new
    /// connection closes on first use: in TLS 1.3 the client finishes its handshake before the
    /// broker has checked the client certificate, so a broker requiring mutual TLS rejects
    /// the client just after `connect` returned.
    pub fn from_connection(broker: SocketAddr, source: ConnectionError) -> Self {
        classify_connect_error(broker, source)
    }
}

fn classify_connect_error(broker: SocketAddr, source: ConnectionError) -> ConnectError {
    let is_certificate_alert = |code: TransportErrorCode| {
        [
            alert::BAD_CERTIFICATE,
            alert::UNSUPPORTED_CERTIFICATE,
            alert::CERTIFICATE_EXPIRED,
            alert::CERTIFICATE_UNKNOWN,
            alert::UNKNOWN_CA,
            alert::CERTIFICATE_REQUIRED,
        ]
        .into_iter()
        .any(|alert| code == TransportErrorCode::crypto(alert))
    };
    let no_alpn = TransportErrorCode::crypto(alert::NO_APPLICATION_PROTOCOL);
    match &source {
        // Detected by our TLS stack: the broker's certificate failed verification.
        // rustls reports some verification failures with other alerts (a signature that does
        // not verify against a same-named anchor gives decrypt_error), hence the reason check.
        ConnectionError::TransportError(error)
            if is_certificate_alert(error.code)
                || error.reason.starts_with("invalid peer certificate") =>
        {
            ConnectError::UntrustedBroker {
                broker,
                reason: error.reason.clone(),
            }
        }
        ConnectionError::TransportError(error) if error.code == no_alpn => {
            ConnectError::AlpnMismatch { broker }
        }
        // Sent by the broker's TLS stack.
        ConnectionError::ConnectionClosed(close) if close.error_code == no_alpn => {
            ConnectError::AlpnMismatch { broker }
        }
        ConnectionError::ConnectionClosed(close) if is_certificate_alert(close.error_code) => {
            let reason = String::from_utf8_lossy(&close.reason).into_owned();
            ConnectError::ClientRejected { broker, reason }
        }
        _ => ConnectError::Connection { broker, source },
    }
}
