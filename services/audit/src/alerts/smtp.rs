//! SMTP over TLS for alert mail: lettre speaks SMTP (EHLO, AUTH, MAIL,
//! RCPT, DATA) over a TLS stream this module opens with the process's own
//! rustls — TLS 1.3 only, like every other connection of the mesh. (lettre's
//! own TLS support would compile TLS 1.2 into rustls for the whole
//! process.)
//!
//! `smtps://host:465` is implicit TLS. `smtp://host:587?tls=starttls` reads
//! the greeting, sends `EHLO` and `STARTTLS` in clear, upgrades, and hands
//! lettre the encrypted stream behind a synthetic greeting, so lettre starts
//! its session (a new `EHLO`, as RFC 3207 requires) over TLS. Plaintext SMTP
//! is refused.

use std::io::Cursor;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use lettre::Message;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream};
use lettre::transport::smtp::extension::ClientId;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::mail::MailError;

/// How long connecting and each step of the STARTTLS preamble may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// Where and how alert mail is submitted.
#[derive(Clone)]
pub struct SmtpServer {
    host: String,
    port: u16,
    implicit_tls: bool,
    credentials: Option<Credentials>,
    tls: Arc<rustls::ClientConfig>,
    /// The URL without its password, for messages.
    shown: String,
}

impl std::fmt::Debug for SmtpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpServer")
            .field("server", &self.shown)
            .finish_non_exhaustive()
    }
}

fn url_error(shown: &str, problem: impl std::fmt::Display) -> MailError {
    MailError::Url(format!("{shown}: {problem}"))
}

impl SmtpServer {
    /// The server of `url`, trusting the public roots plus `ca_file`.
    pub fn from_url(url: &str, ca_file: Option<&Path>) -> Result<SmtpServer, MailError> {
        let parsed = url::Url::parse(url).map_err(|e| MailError::Url(e.to_string()))?;
        let mut shown = parsed.clone();
        let _ = shown.set_password(None);
        let shown = shown.to_string();
        let tls_mode = parsed
            .query_pairs()
            .find(|(k, _)| k == "tls")
            .map(|(_, v)| v.into_owned());
        let (implicit_tls, default_port) = match (parsed.scheme(), tls_mode.as_deref()) {
            ("smtps", None) => (true, 465),
            ("smtp", Some("starttls" | "required")) => (false, 587),
            _ => {
                return Err(url_error(
                    &shown,
                    "use smtps://host:465 (TLS) or smtp://host:587?tls=starttls; \
                     plaintext SMTP is refused",
                ));
            }
        };
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| url_error(&shown, "no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let credentials = (!parsed.username().is_empty()).then(|| {
            Credentials::new(
                decode(parsed.username()),
                decode(parsed.password().unwrap_or_default()),
            )
        });
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = ca_file {
            let ca_error = |problem: String| MailError::Ca {
                path: path.to_path_buf(),
                problem,
            };
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| ca_error(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ca_error(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_error("no certificate in the file".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| url_error(&shown, e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        ServerName::try_from(host.clone()).map_err(|e| url_error(&shown, e))?;
        Ok(SmtpServer {
            host,
            port: parsed.port().unwrap_or(default_port),
            implicit_tls,
            credentials,
            tls: Arc::new(tls),
            shown,
        })
    }

    /// Submits `message` (its envelope from its headers); an error says
    /// what failed, without credentials.
    pub async fn send(&self, message: &Message) -> Result<(), String> {
        let stream = tokio::time::timeout(STEP_TIMEOUT, self.open())
            .await
            .map_err(|_| format!("{}: timed out", self.shown))??;
        let hello = ClientId::Domain("trustmesh".to_owned());
        let mut conn = AsyncSmtpConnection::connect_with_transport(Box::new(stream), &hello)
            .await
            .map_err(|e| format!("{}: {e}", self.shown))?;
        if let Some(credentials) = &self.credentials {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await
                .map_err(|e| format!("{}: authentication: {e}", self.shown))?;
        }
        conn.send(message.envelope(), &message.formatted())
            .await
            .map_err(|e| format!("{}: {e}", self.shown))?;
        let _ = conn.quit().await;
        Ok(())
    }

    /// TCP, the STARTTLS preamble if any, then the TLS 1.3 handshake.
    async fn open(&self) -> Result<SmtpStream, String> {
        let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", self.shown);
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| fail(&e))?;
        let peer = tcp.peer_addr().map_err(|e| fail(&e))?;
        let (tcp, prefix) = if self.implicit_tls {
            (tcp, Vec::new())
        } else {
            let mut plain = BufReader::new(tcp);
            reply(&mut plain, "220").await.map_err(|e| fail(&e))?;
            plain
                .write_all(b"EHLO trustmesh\r\n")
                .await
                .map_err(|e| fail(&e))?;
            reply(&mut plain, "250").await.map_err(|e| fail(&e))?;
            plain
                .write_all(b"STARTTLS\r\n")
                .await
                .map_err(|e| fail(&e))?;
            reply(&mut plain, "220").await.map_err(|e| fail(&e))?;
            // lettre begins a session by reading a greeting: give it one.
            (
                plain.into_inner(),
                b"220 trustmesh STARTTLS done\r\n".to_vec(),
            )
        };
        let name = ServerName::try_from(self.host.clone()).map_err(|e| fail(&e))?;
        let tls = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| fail(&e))?;
        Ok(SmtpStream {
            prefix: Cursor::new(prefix),
            tls,
            peer,
        })
    }
}

/// Reads one (possibly multi-line) reply and checks its code.
async fn reply(stream: &mut BufReader<TcpStream>, code: &str) -> Result<(), String> {
    loop {
        let mut line = String::new();
        let read = tokio::time::timeout(STEP_TIMEOUT, stream.read_line(&mut line))
            .await
            .map_err(|_| "timed out waiting for the server".to_owned())?
            .map_err(|e| e.to_string())?;
        if read == 0 {
            return Err("the server closed the connection".to_owned());
        }
        if !line.starts_with(code) {
            return Err(format!("expected {code}, got {:?}", line.trim_end()));
        }
        // `250-…` continues, `250 …` ends the reply.
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(());
        }
    }
}

/// The TLS stream lettre talks through, after `prefix` (the synthetic
/// greeting of a STARTTLS session; empty for implicit TLS).
struct SmtpStream {
    prefix: Cursor<Vec<u8>>,
    tls: TlsStream<TcpStream>,
    peer: SocketAddr,
}

impl std::fmt::Debug for SmtpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpStream")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl AsyncRead for SmtpStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let position = usize::try_from(self.prefix.position()).unwrap_or(usize::MAX);
        let pending = self.prefix.get_ref().get(position..).unwrap_or_default();
        if !pending.is_empty() {
            let n = pending.len().min(buf.remaining());
            buf.put_slice(&pending[..n]);
            self.prefix.set_position((position + n) as u64);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for SmtpStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for SmtpStream {
    fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.peer)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::SmtpServer;

    #[test]
    fn urls_are_checked() {
        let ok = SmtpServer::from_url("smtps://u:p%40ss@mail.example.com", None).unwrap();
        assert_eq!((ok.port, ok.implicit_tls), (465, true));
        assert!(!format!("{ok:?}").contains("p%40ss"));
        let ok = SmtpServer::from_url("smtp://127.0.0.1:2525?tls=starttls", None).unwrap();
        assert_eq!((ok.port, ok.implicit_tls), (2525, false));
        for bad in [
            "smtp://mail.example.com",
            "http://x",
            "smtps://",
            "not a url",
        ] {
            assert!(SmtpServer::from_url(bad, None).is_err(), "{bad}");
        }
    }
}
