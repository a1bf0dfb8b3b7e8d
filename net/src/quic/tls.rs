//! TLS 1.3 and transport settings of the native protocol's QUIC connections.
//!
//! Main items: [`server_config`] and [`client_config`] (quinn configs ready for an endpoint),
//! the rustls-level builders they wrap ([`server_rustls_config`], [`client_rustls_config`]),
//! [`self_signed_identity`] (the broker's certificate when none is given) and
//! [`transport_config`] (stream limits, windows, keep-alive).
//!
//! Must not depend on: the runtime, the native frame format, or anything above the transport.
//!
//! # Trust model
//!
//! - Server identity: `--tls-cert/--tls-key` PEM files, or, with neither, a self-signed
//!   certificate made on first start in a directory (the broker passes `DATA/tls/`) and
//!   reused on every restart, so clients that pinned it keep working.
//! - Client authentication (mutual TLS) is optional: with `--ca` on the server, clients must
//!   present a certificate that chains to it.
//! - The client verifies the broker against `--ca` when given. Without `--ca` it trusts a
//!   broker on a loopback address without verification, so `sluice produce` works on a laptop
//!   with no flags. The trade-off: loopback traffic cannot be seen or altered off the host, so
//!   the only party that could impersonate the broker is another local process that took its
//!   port (another user on a shared machine, say). Production traffic leaves the host and
//!   needs `--ca`; a non-loopback broker without `--ca` is refused with an error saying so.
//! - ALPN `sluice/1` on both sides: a peer speaking anything else fails the handshake.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, MtuDiscoveryConfig, TransportConfig, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::limits::{
    QUIC_BIDI_STREAMS_MAX, QUIC_CONNECTION_RECEIVE_WINDOW_BYTES, QUIC_IDLE_TIMEOUT_MS,
    QUIC_KEEP_ALIVE_INTERVAL_MS, QUIC_MAX_UDP_PAYLOAD_BYTES, QUIC_SEND_WINDOW_BYTES,
    QUIC_STREAM_RECEIVE_WINDOW_BYTES,
};

/// The ALPN protocol id of the native protocol, version 1 of its connection semantics.
///
/// Frame-level versions are negotiated per frame (net/PROTOCOL.md); this id changes only if
/// the way streams are used changes incompatibly.
pub const ALPN_SLUICE_V1: &[u8] = b"sluice/1";

/// File name of the self-signed certificate inside the identity directory.
pub const SELF_SIGNED_CERT_FILE: &str = "cert.pem";

/// File name of the self-signed certificate's private key inside the identity directory.
pub const SELF_SIGNED_KEY_FILE: &str = "key.pem";

/// A certificate chain and its private key, as PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertKeyPaths {
    /// PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Where the broker's certificate comes from.
#[derive(Clone, Debug)]
pub enum ServerIdentity {
    /// `--tls-cert/--tls-key`.
    Files(CertKeyPaths),
    /// A self-signed certificate kept in `dir`, made on first use for `names` (DNS names or
    /// IP addresses); see [`self_signed_identity`].
    SelfSigned {
        /// Directory holding `cert.pem` and `key.pem` (the broker uses `DATA/tls/`).
        dir: PathBuf,
        /// Subject alternative names for a new certificate; ignored when one exists.
        names: Vec<String>,
    },
}

/// Server-side TLS options.
#[derive(Clone, Debug)]
pub struct ServerTlsOptions {
    /// The broker's certificate and key.
    pub identity: ServerIdentity,
    /// `--ca` on the broker: when set, clients must present a certificate chaining to it.
    pub client_ca: Option<PathBuf>,
}

/// Client-side TLS options.
#[derive(Clone, Debug, Default)]
pub struct ClientTlsOptions {
    /// `--ca`: PEM certificates of the authorities trusted to sign broker certificates.
    pub ca: Option<PathBuf>,
    /// Client certificate and key, for brokers that require mutual TLS.
    pub identity: Option<CertKeyPaths>,
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("cannot read {what} from {path}: {source}")]
    Pem {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate file holds no certificate.
    #[error("{path} holds no PEM certificate")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A `--ca` certificate was rejected as a trust anchor.
    #[error("{path} is not a usable certificate authority: {source}")]
    BadCa {
        /// The file.
        path: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// The client-certificate verifier could not be built from `--ca`.
    #[error("cannot verify client certificates against {path}: {source}")]
    ClientVerifier {
        /// The `--ca` file.
        path: PathBuf,
        /// What rustls said.
        source: rustls::server::VerifierBuilderError,
    },
    /// rustls rejected the certificate/key pair or the protocol settings.
    #[error("invalid TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// A self-signed certificate could not be generated.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The self-signed identity could not be written.
    #[error("cannot write the self-signed certificate to {path}: {source}")]
    WriteIdentity {
        /// The file being written.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The identity directory has a certificate but no key.
    #[error(
        "{cert} exists but its key {key} is missing; delete {cert} to make a new self-signed \
         certificate"
    )]
    MissingKey {
        /// The certificate found.
        cert: PathBuf,
        /// The key expected beside it.
        key: PathBuf,
    },
    /// A client without `--ca` was pointed at a broker off the loopback interface.
    #[error(
        "broker {broker} is not on a loopback address, so its certificate must be verified: \
         pass --ca with the PEM certificate of the authority that signed it (for a broker's \
         self-signed certificate, its DATA/tls/cert.pem)"
    )]
    CaRequired {
        /// The broker address.
        broker: SocketAddr,
    },
    /// The rustls configuration lacks the cipher suite QUIC needs for its initial packets.
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

/// Subject alternative names for a broker's self-signed certificate reached on loopback.
pub fn default_self_signed_names() -> Vec<String> {
    vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ]
}

/// Returns the self-signed identity kept in `dir`, making it first if `dir` has no certificate.
///
/// The key is written before the certificate, with mode 0600, each through a temporary file
/// and a rename, so a crash leaves either no certificate (and the next start makes a new
/// pair) or a complete pair. An existing certificate is reused as is, whatever `names` says:
/// delete `dir` to change the names.
///
/// Uses blocking file-system calls (as do the PEM loaders behind every config builder here):
/// build TLS configurations at broker start, before the shards serve.
pub fn self_signed_identity(dir: &Path, names: &[String]) -> Result<CertKeyPaths, TlsError> {
    let paths = CertKeyPaths {
        cert: dir.join(SELF_SIGNED_CERT_FILE),
        key: dir.join(SELF_SIGNED_KEY_FILE),
    };
    if paths.cert.exists() {
        if !paths.key.exists() {
            return Err(TlsError::MissingKey {
                cert: paths.cert,
                key: paths.key,
            });
        }
        return Ok(paths);
    }
    let key_pair = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    // A distinct subject per certificate: verifiers pick a trust anchor by subject name, so
    // two brokers' certificates with one name would fail as "bad signature" rather than
    // "unknown issuer" when a client trusts the wrong one.
    let fingerprint: String = key_pair
        .public_key_raw()
        .iter()
        .rev()
        .take(8)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let common_name = format!("sluice broker {fingerprint} (self-signed)");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    // Client authentication too, so a broker can present the same identity on connections
    // it opens (peer links with mutual TLS).
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.self_signed(&key_pair)?;
    let write_error = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::WriteIdentity { path, source }
    };
    std::fs::create_dir_all(dir).map_err(write_error(dir))?;
    write_atomically(&paths.key, key_pair.serialize_pem().as_bytes(), 0o600)
        .map_err(write_error(&paths.key))?;
    write_atomically(&paths.cert, cert.pem().as_bytes(), 0o644)
        .map_err(write_error(&paths.cert))?;
    tracing::info!(
        "made a self-signed TLS certificate for {names:?} in {}",
        dir.display()
    );
    Ok(paths)
}

fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

/// The rustls server configuration: TLS 1.3 only, ALPN `sluice/1`, optional client
/// certificates.
pub fn server_rustls_config(options: &ServerTlsOptions) -> Result<rustls::ServerConfig, TlsError> {
    let paths = match &options.identity {
        ServerIdentity::Files(paths) => paths.clone(),
        ServerIdentity::SelfSigned { dir, names } => self_signed_identity(dir, names)?,
    };
    let (certs, key) = load_identity(&paths)?;
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match &options.client_ca {
        Some(path) => {
            let roots = Arc::new(load_roots(path)?);
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|source| TlsError::ClientVerifier {
                        path: path.clone(),
                        source,
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![ALPN_SLUICE_V1.to_vec()];
    Ok(config)
}

/// The quinn server configuration: [`server_rustls_config`] plus [`transport_config`].
pub fn server_config(options: &ServerTlsOptions) -> Result<quinn::ServerConfig, TlsError> {
    quic_server_config(server_rustls_config(options)?)
}

/// Wraps a rustls server configuration for quinn, with [`transport_config`].
pub fn quic_server_config(tls: rustls::ServerConfig) -> Result<quinn::ServerConfig, TlsError> {
    let crypto = QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

/// The rustls client configuration for talking to the broker at `broker`: TLS 1.3 only, ALPN
/// `sluice/1`, verification against `--ca`, or none for a loopback broker without `--ca`.
pub fn client_rustls_config(
    options: &ClientTlsOptions,
    broker: SocketAddr,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match &options.ca {
        Some(path) => builder.with_root_certificates(load_roots(path)?),
        None if broker.ip().is_loopback() => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(LoopbackVerifier { provider })),
        None => return Err(TlsError::CaRequired { broker }),
    };
    let mut config = match &options.identity {
        Some(paths) => {
            let (certs, key) = load_identity(paths)?;
            builder.with_client_auth_cert(certs, key)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_SLUICE_V1.to_vec()];
    Ok(config)
}

/// The quinn client configuration: [`client_rustls_config`] plus [`transport_config`].
pub fn client_config(
    options: &ClientTlsOptions,
    broker: SocketAddr,
) -> Result<quinn::ClientConfig, TlsError> {
    quic_client_config(client_rustls_config(options, broker)?)
}

/// Wraps a rustls client configuration for quinn, with [`transport_config`].
pub fn quic_client_config(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, TlsError> {
    let crypto = QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

/// QUIC transport settings shared by both sides (values and reasons in `limits.rs`).
///
/// Bounded concurrent bidirectional streams (one request each), no unidirectional streams or
/// datagrams (unused by the protocol, so refused), MiB-scale flow-control windows so one
/// stream can run at loopback speed, path MTU discovery up to [`QUIC_MAX_UDP_PAYLOAD_BYTES`],
/// keep-alive well inside the idle timeout.
pub fn transport_config() -> TransportConfig {
    let mut mtu_discovery = MtuDiscoveryConfig::default();
    mtu_discovery.upper_bound(QUIC_MAX_UDP_PAYLOAD_BYTES);
    let mut config = TransportConfig::default();
    config
        .max_concurrent_bidi_streams(VarInt::from_u32(QUIC_BIDI_STREAMS_MAX))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(None)
        .stream_receive_window(VarInt::from_u32(QUIC_STREAM_RECEIVE_WINDOW_BYTES))
        .receive_window(VarInt::from_u32(QUIC_CONNECTION_RECEIVE_WINDOW_BYTES))
        .send_window(QUIC_SEND_WINDOW_BYTES)
        .mtu_discovery_config(Some(mtu_discovery))
        .keep_alive_interval(Some(Duration::from_millis(QUIC_KEEP_ALIVE_INTERVAL_MS)))
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(
            u32::try_from(QUIC_IDLE_TIMEOUT_MS).expect("idle timeout fits in u32 milliseconds"),
        ))));
    config
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_identity(
    paths: &CertKeyPaths,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let certs = load_certs(&paths.cert, "certificate")?;
    let key = PrivateKeyDer::from_pem_file(&paths.key).map_err(|source| TlsError::Pem {
        what: "private key",
        path: paths.key.clone(),
        source,
    })?;
    Ok((certs, key))
}

fn load_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |source| TlsError::Pem {
        what,
        path: path.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path, "CA certificate")? {
        roots.add(cert).map_err(|source| TlsError::BadCa {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

/// Accepts any certificate from a broker on a loopback address (see the module docs for the
/// trade-off), while still checking the handshake signature so the broker must hold the key
/// of the certificate it presents.
#[derive(Debug)]
struct LoopbackVerifier {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for LoopbackVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the self-signed identity is made once and reused on restart, with a private key.
    // Method: build it twice in one directory; the second call must return the same files
    // with unchanged contents, and the key must not be readable by others.
    #[test]
    fn self_signed_identity_is_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let tls_dir = dir.path().join("tls");
        let first = self_signed_identity(&tls_dir, &default_self_signed_names()).expect("make");
        let cert = std::fs::read(&first.cert).expect("cert written");
        let second = self_signed_identity(&tls_dir, &["other".to_owned()]).expect("reuse");
        assert_eq!(first, second);
        assert_eq!(std::fs::read(&second.cert).expect("cert kept"), cert);
        let mode = std::fs::metadata(&first.key)
            .expect("key written")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "key mode {mode:o}");
        let options = ServerTlsOptions {
            identity: ServerIdentity::SelfSigned {
                dir: tls_dir,
                names: vec![],
            },
            client_ca: Some(first.cert.clone()),
        };
        let config = server_rustls_config(&options).expect("config from the stored identity");
        assert_eq!(config.alpn_protocols, vec![ALPN_SLUICE_V1.to_vec()]);
    }

    // Goal: a certificate without its key is reported, not silently replaced.
    // Method: make an identity, delete the key, ask again.
    #[test]
    fn missing_key_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let paths = self_signed_identity(dir.path(), &default_self_signed_names()).expect("make");
        std::fs::remove_file(&paths.key).expect("remove key");
        let error = self_signed_identity(dir.path(), &[]).expect_err("key missing");
        assert!(matches!(error, TlsError::MissingKey { .. }), "{error}");
        assert!(error.to_string().contains("delete"), "{error}");
    }

    // Goal: the client trusts only loopback brokers without --ca, and says how to fix it.
    // Method: build client configs for a loopback and a routable address without --ca.
    #[test]
    fn client_requires_ca_off_loopback() {
        let options = ClientTlsOptions::default();
        let loopback = "127.0.0.1:9192".parse().expect("literal");
        let config = client_rustls_config(&options, loopback).expect("loopback is trusted");
        assert_eq!(config.alpn_protocols, vec![ALPN_SLUICE_V1.to_vec()]);
        let ipv6_loopback = "[::1]:9192".parse().expect("literal");
        client_rustls_config(&options, ipv6_loopback).expect("::1 is loopback");
        let remote: SocketAddr = "192.0.2.10:9192".parse().expect("literal");
        let error = client_rustls_config(&options, remote).expect_err("needs --ca");
        assert!(matches!(error, TlsError::CaRequired { .. }));
        assert!(error.to_string().contains("pass --ca"), "{error}");
    }

    // Goal: unreadable or empty PEM inputs give errors that name the file.
    // Method: point --ca at a missing file and at a file without certificates.
    #[test]
    fn bad_pem_files_name_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing.pem");
        let options = ClientTlsOptions {
            ca: Some(missing.clone()),
            identity: None,
        };
        let broker = "127.0.0.1:9192".parse().expect("literal");
        let error = client_rustls_config(&options, broker).expect_err("missing file");
        assert!(error.to_string().contains("missing.pem"), "{error}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no pem here\n").expect("write");
        let options = ClientTlsOptions {
            ca: Some(empty),
            identity: None,
        };
        let error = client_rustls_config(&options, broker).expect_err("no certificate");
        assert!(matches!(error, TlsError::NoCertificate { .. }), "{error}");
    }
}
