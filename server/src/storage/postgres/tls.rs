//! The link to PostgreSQL: TLS with rustls, `sslmode` as libpq means it, and no
//! password in clear text over a link that is not encrypted.
//!
//! Records and credentials cross this link, so on a network it must be encrypted and
//! the server it reaches must be the right one:
//!
//! - `sslmode` in the URL: `disable`, `prefer` (TLS when the server offers it, any
//!   certificate), `require` (TLS, any certificate; with `sslrootcert` it checks the
//!   chain, as libpq does), `verify-ca` (the chain must lead to `sslrootcert`),
//!   `verify-full` (and the certificate must name the host). Without `sslmode`, a
//!   URL whose hosts are all loopback (or Unix sockets) gets `prefer`, any other
//!   `require`: a database across a network is never reached in clear by default.
//! - `sslrootcert`: a PEM file of CA certificates, or `system` for the Mozilla roots
//!   (managed databases with a public CA).
//! - SCRAM-SHA-256 binds itself to the TLS channel (`tls-server-end-point`) when the
//!   server offers `SCRAM-SHA-256-PLUS`, so a man in the middle of an unverified link
//!   cannot relay the exchange; `channel_binding=require` insists on it.
//! - A server that asks for the password in clear text over an unencrypted link is
//!   refused before the password is sent (tokio-postgres alone would send it): see
//!   [`CleartextGuard`].
//!
//! tokio-postgres itself knows only `disable`, `prefer` and `require`, so the URL's
//! `sslmode` and `sslrootcert` are taken out here and the verification is done by the
//! rustls configuration this module builds.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sha2::{Digest, Sha256, Sha384, Sha512};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::{Host, SslMode as PgSslMode};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            // libpq's `allow` tries clear text first; here it means as much as prefer.
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// Whether the link is always encrypted.
    pub fn always_tls(self) -> bool {
        !matches!(self, SslMode::Disable | SslMode::Prefer)
    }
}

/// Where the CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    File(PathBuf),
    /// The Mozilla root programme's CAs.
    System,
}

/// How the link is secured, from the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub mode: SslMode,
    pub root_cert: Option<RootCert>,
}

/// A URL with `sslmode` and `sslrootcert` taken out, for tokio-postgres, and the
/// link they ask for; defaults applied.
pub fn parse_url(url: &str) -> Result<(tokio_postgres::Config, Link), String> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut mode = None;
    let mut root_cert = None;
    let mut kept = Vec::new();
    for raw in query.split('&').filter(|p| !p.is_empty()) {
        let mut pairs = url::form_urlencoded::parse(raw.as_bytes());
        let (k, v) = pairs.next().unwrap_or_default();
        match k.as_ref() {
            "sslmode" => {
                mode = Some(SslMode::parse(&v).ok_or_else(|| {
                    format!("sslmode {v:?}: use disable, prefer, require, verify-ca or verify-full")
                })?);
            }
            "sslrootcert" => {
                if v.is_empty() {
                    return Err("sslrootcert is empty".into());
                }
                root_cert = Some(if v == "system" {
                    RootCert::System
                } else {
                    RootCert::File(PathBuf::from(v.as_ref()))
                });
            }
            _ => kept.push(raw),
        }
    }
    let stripped = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let mut config = tokio_postgres::Config::from_str(&stripped).map_err(|e| e.to_string())?;
    let mode = mode.unwrap_or_else(|| {
        if all_local(&config) {
            SslMode::Prefer
        } else {
            SslMode::Require
        }
    });
    // libpq: with a CA file, require checks the chain like verify-ca.
    let mode = match (mode, &root_cert) {
        (SslMode::Require, Some(_)) => SslMode::VerifyCa,
        (m, _) => m,
    };
    if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && root_cert.is_none() {
        return Err(
            "sslmode=verify-ca and verify-full need sslrootcert=<CA file in PEM> \
             (or sslrootcert=system for the public CAs)"
                .into(),
        );
    }
    config.ssl_mode(match mode {
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        _ => PgSslMode::Require,
    });
    Ok((config, Link { mode, root_cert }))
}

/// Whether every host of the config is on this machine (loopback or a Unix socket).
fn all_local(config: &tokio_postgres::Config) -> bool {
    let hosts_local = config.get_hosts().iter().all(|h| match h {
        Host::Tcp(name) => {
            name == "localhost"
                || name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        #[cfg(unix)]
        Host::Unix(_) => true,
    });
    hosts_local && config.get_hostaddrs().iter().all(IpAddr::is_loopback)
}

/// The rustls configuration for a link.
pub fn client_config(link: &Link) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let roots = match &link.root_cert {
        None => None,
        Some(RootCert::System) => Some(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        }),
        Some(RootCert::File(path)) => {
            let mut store = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            for c in certs {
                let c = c.map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                store
                    .add(c)
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            }
            if store.is_empty() {
                return Err(format!(
                    "sslrootcert {}: no certificate in it",
                    path.display()
                ));
            }
            Some(store)
        }
    };
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let webpki = |roots: RootCertStore| {
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .map_err(|e| e.to_string())
    };
    let verifier: Arc<dyn ServerCertVerifier> = match (link.mode, roots) {
        (SslMode::VerifyFull, Some(r)) => webpki(r)?,
        (SslMode::VerifyCa, Some(r)) => Arc::new(ChainOnly(webpki(r)?)),
        (SslMode::VerifyFull | SslMode::VerifyCa, None) => {
            return Err("sslrootcert is needed to verify the server".into());
        }
        _ => Arc::new(AnyCertificate(provider.signature_verification_algorithms)),
    };
    let mut config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // What PostgreSQL 17 asks of direct TLS; older servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Arc::new(config))
}

/// `verify-ca`: the chain must lead to a trusted CA; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without a CA: encryption against eavesdropping only, as in
/// libpq. The handshake's signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Makes rustls connections for tokio-postgres.
#[derive(Debug, Clone)]
pub struct RustlsConnect(pub Arc<ClientConfig>);

impl<S> MakeTlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsHost;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsHost, io::Error> {
        // An empty name (a Unix socket, where PostgreSQL has no TLS) fails only if used.
        let name = ServerName::try_from(domain.trim_start_matches('[').trim_end_matches(']'))
            .map(|n| n.to_owned())
            .ok();
        Ok(RustlsHost {
            config: Arc::clone(&self.0),
            name,
        })
    }
}

/// A rustls connector for one host.
#[derive(Debug)]
pub struct RustlsHost {
    config: Arc<ClientConfig>,
    name: Option<ServerName<'static>>,
}

impl<S> TlsConnect<S> for RustlsHost
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name = self.name.ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "no host name to verify")
            })?;
            let tls = tokio_rustls::TlsConnector::from(self.config)
                .connect(name, stream)
                .await?;
            Ok(RustlsStream(Box::new(tls)))
        })
    }
}

/// An established TLS link, which tells SCRAM the server certificate's hash.
pub struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S> std::fmt::Debug for RustlsStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RustlsStream")
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        let (_, conn) = self.0.get_ref();
        conn.peer_certificates()
            .and_then(|c| c.first())
            .and_then(|cert| server_end_point(cert.as_ref()))
            .map_or_else(ChannelBinding::none, ChannelBinding::tls_server_end_point)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

/// RFC 5929 `tls-server-end-point`: the certificate's hash, with the hash of its
/// signature algorithm (SHA-256 for MD5 and SHA-1). `None` when that algorithm is not
/// one of those (Ed25519, RSA-PSS): SCRAM then runs without channel binding.
fn server_end_point(der: &[u8]) -> Option<Vec<u8>> {
    const SHA256: [&[u8]; 5] = [
        // md5, sha1, sha256 WithRSAEncryption; ecdsa-with-SHA1, ecdsa-with-SHA256
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x04],
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05],
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b],
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01],
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02],
    ];
    const SHA384: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c],
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
    ];
    const SHA512: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d],
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],
    ];
    let oid = signature_algorithm(der)?;
    if SHA256.contains(&oid) {
        Some(Sha256::digest(der).to_vec())
    } else if SHA384.contains(&oid) {
        Some(Sha384::digest(der).to_vec())
    } else if SHA512.contains(&oid) {
        Some(Sha512::digest(der).to_vec())
    } else {
        None
    }
}

/// One DER element: tag, contents, and what follows it.
fn der_element(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The OID of `Certificate.signatureAlgorithm` (after `tbsCertificate`).
fn signature_algorithm(der: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    let (tag, cert, _) = der_element(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (_, _, after_tbs) = der_element(cert)?;
    let (tag, alg, _) = der_element(after_tbs)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, oid, _) = der_element(alg)?;
    (tag == OID).then_some(oid)
}

/// The first bytes a client sends to ask for TLS (PostgreSQL's SSLRequest).
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Watches the start of an unencrypted PostgreSQL conversation and fails the read in
/// which the server asks for the password in clear text (AuthenticationCleartextPassword),
/// so it is never sent. Once TLS is agreed (the server answers `S` to SSLRequest) or
/// authentication is over, it only passes bytes through.
#[derive(Debug, Default)]
pub struct CleartextGuard {
    /// The client asked for TLS and the one-byte answer is still to come.
    awaiting_tls_answer: bool,
    started: bool,
    done: bool,
    /// The current message's type, length and authentication code, as read so far.
    header: Vec<u8>,
    /// Bytes of the current message still to skip.
    skip: usize,
}

/// Why a guarded connection was refused.
pub const CLEARTEXT_REFUSED: &str = "the database server asked for the password in clear text \
     over an unencrypted link; refused (use sslmode=require or stronger, or SCRAM)";

impl CleartextGuard {
    /// Bytes the client writes.
    pub fn wrote(&mut self, bytes: &[u8]) {
        if !self.started {
            self.started = true;
            self.awaiting_tls_answer = bytes.starts_with(&SSL_REQUEST);
        }
    }

    /// Bytes the server sent; an error when they ask for a clear-text password.
    pub fn read(&mut self, mut bytes: &[u8]) -> Result<(), &'static str> {
        while !self.done && !bytes.is_empty() {
            if self.awaiting_tls_answer {
                self.awaiting_tls_answer = false;
                match bytes[0] {
                    // Everything from here on is TLS.
                    b'S' => {
                        self.done = true;
                        return Ok(());
                    }
                    b'N' => {
                        bytes = &bytes[1..];
                        continue;
                    }
                    // An old server's error message instead of the answer: parse it.
                    _ => {}
                }
            }
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            // Type (1), length (4), and for 'R' the authentication code (4).
            let want = if self.header.first() == Some(&b'R') {
                9
            } else {
                5
            };
            let n = (want - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.header.len() < want {
                continue;
            }
            if want == 5 && self.header[0] == b'R' {
                continue;
            }
            let len = u32::from_be_bytes([
                self.header[1],
                self.header[2],
                self.header[3],
                self.header[4],
            ]) as usize;
            if self.header[0] == b'R' {
                let code = u32::from_be_bytes([
                    self.header[5],
                    self.header[6],
                    self.header[7],
                    self.header[8],
                ]);
                match code {
                    3 => return Err(CLEARTEXT_REFUSED),
                    // AuthenticationOk: nothing more to watch.
                    0 => self.done = true,
                    _ => {}
                }
                self.skip = len.saturating_sub(8);
            } else {
                self.skip = len.saturating_sub(4);
            }
            self.header.clear();
        }
        Ok(())
    }
}

/// A socket under a [`CleartextGuard`].
#[derive(Debug)]
pub struct Guarded<S> {
    inner: S,
    guard: CleartextGuard,
}

impl<S> Guarded<S> {
    pub fn new(inner: S) -> Guarded<S> {
        Guarded {
            inner,
            guard: CleartextGuard::default(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        match this.guard.read(&buf.filled()[before..]) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(why) => Poll::Ready(Err(io::Error::new(io::ErrorKind::PermissionDenied, why))),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.guard.wrote(&buf[..r]);
        Poll::Ready(Ok(r))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A socket to PostgreSQL, or the error that stands for one that could not be opened
/// (the pool expects a `tokio_postgres::Error`, which has no public constructor, so a
/// connect error of ours reaches it through a stream that fails at once).
#[derive(Debug)]
pub enum PgSocket {
    Tcp(tokio::net::TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
    Failed(Option<io::Error>),
}

impl PgSocket {
    fn failure(e: &mut Option<io::Error>) -> io::Error {
        e.take()
            .unwrap_or_else(|| io::Error::other("connection failed"))
    }
}

impl AsyncRead for PgSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PgSocket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(unix)]
            PgSocket::Unix(s) => Pin::new(s).poll_read(cx, buf),
            PgSocket::Failed(e) => Poll::Ready(Err(PgSocket::failure(e))),
        }
    }
}

impl AsyncWrite for PgSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PgSocket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(unix)]
            PgSocket::Unix(s) => Pin::new(s).poll_write(cx, buf),
            PgSocket::Failed(e) => Poll::Ready(Err(PgSocket::failure(e))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PgSocket::Tcp(s) => Pin::new(s).poll_flush(cx),
            #[cfg(unix)]
            PgSocket::Unix(s) => Pin::new(s).poll_flush(cx),
            PgSocket::Failed(e) => Poll::Ready(Err(PgSocket::failure(e))),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PgSocket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(unix)]
            PgSocket::Unix(s) => Pin::new(s).poll_shutdown(cx),
            PgSocket::Failed(_) => Poll::Ready(Ok(())),
        }
    }
}

/// How long one TCP connect may take when the config does not say.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a socket to one host of the config.
async fn open_socket(host: &Host, port: u16, timeout: Duration) -> io::Result<PgSocket> {
    match host {
        Host::Tcp(name) => {
            let name = name.trim_start_matches('[').trim_end_matches(']');
            let connect = tokio::net::TcpStream::connect((name, port));
            let tcp = tokio::time::timeout(timeout, connect)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            let _ = tcp.set_nodelay(true);
            Ok(PgSocket::Tcp(tcp))
        }
        #[cfg(unix)]
        Host::Unix(dir) => {
            let path = dir.join(format!(".s.PGSQL.{port}"));
            Ok(PgSocket::Unix(tokio::net::UnixStream::connect(path).await?))
        }
    }
}

type ConnectResult =
    Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>;

/// Connections for a link that may be unencrypted and has a password: each one under a
/// [`CleartextGuard`]. (tokio-postgres opens its own sockets, where no guard fits, so
/// the hosts of the config are tried in order here.)
#[derive(Debug, Clone)]
pub struct GuardedConnect(pub RustlsConnect);

impl deadpool_postgres::Connect for GuardedConnect {
    fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> Pin<Box<dyn Future<Output = ConnectResult> + Send + '_>> {
        let config = config.clone();
        let mut tls = self.0.clone();
        Box::pin(async move {
            let timeout = config
                .get_connect_timeout()
                .copied()
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
            let hosts: Vec<Host> = if config.get_hostaddrs().is_empty() {
                config.get_hosts().to_vec()
            } else {
                config
                    .get_hostaddrs()
                    .iter()
                    .map(|a| Host::Tcp(a.to_string()))
                    .collect()
            };
            let ports = config.get_ports();
            let mut last = None;
            for (i, host) in hosts.iter().enumerate() {
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                let name = match config.get_hosts().get(i) {
                    Some(Host::Tcp(n)) => n.clone(),
                    _ => String::new(),
                };
                let stream = open_socket(host, port, timeout)
                    .await
                    .unwrap_or_else(|e| PgSocket::Failed(Some(e)));
                let connector =
                    MakeTlsConnect::<Guarded<PgSocket>>::make_tls_connect(&mut tls, &name)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()));
                let Ok(connector) = connector else {
                    continue;
                };
                match config.connect_raw(Guarded::new(stream), connector).await {
                    Ok((client, connection)) => {
                        let task = tokio::spawn(async move {
                            if let Err(e) = connection.await {
                                tracing::warn!(error = %e, "database connection ended");
                            }
                        });
                        return Ok((client, task));
                    }
                    Err(e) => last = Some(e),
                }
            }
            match last {
                Some(e) => Err(e),
                // No host at all: let tokio-postgres say so in its words.
                None => config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map(|(c, _)| (c, tokio::spawn(async {}))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(url: &str) -> Result<Link, String> {
        parse_url(url).map(|(_, l)| l)
    }

    #[test]
    fn sslmode_defaults_to_require_off_this_machine() {
        assert_eq!(
            link("postgres://u@127.0.0.1/db").unwrap().mode,
            SslMode::Prefer
        );
        assert_eq!(
            link("postgres://u@localhost/db").unwrap().mode,
            SslMode::Prefer
        );
        assert_eq!(link("postgres://u@[::1]/db").unwrap().mode, SslMode::Prefer);
        assert_eq!(
            link("postgres://u@db.example/db").unwrap().mode,
            SslMode::Require
        );
        assert_eq!(
            link("postgres://u@10.0.0.5/db").unwrap().mode,
            SslMode::Require
        );
        assert_eq!(
            link("postgres://u@db.example/db?sslmode=disable")
                .unwrap()
                .mode,
            SslMode::Disable
        );
    }

    #[test]
    fn sslmode_and_rootcert_are_taken_out_of_the_url() {
        let (c, l) = parse_url(
            "postgres://u:pw@db.example:5433/outpost?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(l.mode, SslMode::VerifyFull);
        assert_eq!(l.root_cert, Some(RootCert::File("/etc/ca.pem".into())));
        assert_eq!(c.get_application_name(), Some("x"));
        assert_eq!(c.get_ssl_mode(), PgSslMode::Require);
        let l = link("postgres://u@h/db?sslmode=require&sslrootcert=system").unwrap();
        assert_eq!(
            l.mode,
            SslMode::VerifyCa,
            "require with a CA checks the chain"
        );
        let e = link("postgres://u@h/db?sslmode=verify-full").unwrap_err();
        assert!(e.contains("sslrootcert"), "{e}");
        let e = link("postgres://u@h/db?sslmode=maybe").unwrap_err();
        assert!(e.contains("sslmode"), "{e}");
    }

    #[test]
    fn the_guard_refuses_a_cleartext_password_request_on_a_plain_link() {
        let cleartext = [b'R', 0, 0, 0, 8, 0, 0, 0, 3];
        // Without TLS asked: the first message is the request.
        let mut g = CleartextGuard::default();
        g.wrote(&[0, 0, 0, 40, 0, 3, 0, 0]);
        assert_eq!(g.read(&cleartext), Err(CLEARTEXT_REFUSED));
        // TLS asked and refused ('N'), the request split across reads.
        let mut g = CleartextGuard::default();
        g.wrote(&SSL_REQUEST);
        assert!(g.read(b"N").is_ok());
        assert!(g.read(&cleartext[..3]).is_ok());
        assert_eq!(g.read(&cleartext[3..]), Err(CLEARTEXT_REFUSED));
        // SCRAM (code 10 with its mechanism list) passes, and so does what follows.
        let mut g = CleartextGuard::default();
        g.wrote(b"startup");
        let mut sasl = vec![b'R', 0, 0, 0, 23, 0, 0, 0, 10];
        sasl.extend_from_slice(b"SCRAM-SHA-256\0\0");
        assert!(g.read(&sasl).is_ok());
        assert!(g.read(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0]).is_ok());
        assert!(
            g.read(&cleartext).is_ok(),
            "after AuthenticationOk: not watched"
        );
        // TLS agreed: the rest is encrypted and not parsed.
        let mut g = CleartextGuard::default();
        g.wrote(&SSL_REQUEST);
        assert!(g.read(b"S").is_ok());
        assert!(g.read(&cleartext).is_ok());
    }

    #[test]
    fn the_signature_algorithm_is_read_from_the_certificate() {
        // A minimal Certificate: SEQUENCE { tbs SEQUENCE {}, SEQUENCE { OID, NULL }, BIT STRING }.
        let oid = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
        let mut alg = vec![0x06, oid.len() as u8];
        alg.extend_from_slice(&oid);
        let mut body = vec![0x30, 0x00, 0x30, alg.len() as u8];
        body.extend_from_slice(&alg);
        body.extend_from_slice(&[0x03, 0x01, 0x00]);
        let mut der = vec![0x30, body.len() as u8];
        der.extend_from_slice(&body);
        assert_eq!(signature_algorithm(&der), Some(&oid[..]));
        assert_eq!(server_end_point(&der).map(|h| h.len()), Some(48));
        assert_eq!(signature_algorithm(&der[..5]), None);
    }
}
