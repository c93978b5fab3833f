//! TLS as TDS does it (MS-TDS 2.2.6.5, 3.2.5.2): the TLS handshake travels
//! inside PRELOGIN packets, then TLS records run directly over TCP. With
//! ENCRYPT_ON everything after the handshake is encrypted; with ENCRYPT_OFF
//! only the LOGIN7 message is, and both sides return to plain TDS after it.

use crate::error::Error;
use crate::tds::{self, packet_type, Message, HEADER_LEN};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;

/// Accepts TLS with a self-signed certificate made at start-up.
pub struct Acceptor {
    inner: tokio_rustls::TlsAcceptor,
}

impl Acceptor {
    /// A certificate for `localhost` and 127.0.0.1, valid for the process's life.
    pub fn self_signed() -> Result<Acceptor, Error> {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .map_err(|e| Error::Tls(format!("generate a certificate: {e}")))?;
        let der = cert
            .serialize_der()
            .map_err(|e| Error::Tls(format!("encode the certificate: {e}")))?;
        let key = cert.serialize_private_key_der();
        // TLS 1.2, as SQL Server negotiates inside TDS 7.x PRELOGIN (TLS 1.3
        // needs TDS 8.0's strict encryption).
        let config = rustls::ServerConfig::builder()
            .with_safe_default_cipher_suites()
            .with_safe_default_kx_groups()
            .with_protocol_versions(&[&rustls::version::TLS12])
            .map_err(|e| Error::Tls(format!("TLS versions: {e}")))?
            .with_no_client_auth()
            .with_single_cert(vec![rustls::Certificate(der)], rustls::PrivateKey(key))
            .map_err(|e| Error::Tls(format!("TLS configuration: {e}")))?;
        Ok(Acceptor {
            inner: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Full encryption: the returned stream carries all further TDS traffic.
    pub async fn accept(&self, sock: TcpStream) -> Result<TlsStream<Prelogin<TcpStream>>, Error> {
        let mut tls = self
            .inner
            .accept(Prelogin::new(sock))
            .await
            .map_err(|e| Error::Tls(format!("handshake: {e}")))?;
        tls.get_mut().0.handshake_done = true;
        Ok(tls)
    }

    /// Login-only encryption: reads LOGIN7 over TLS, then hands back the
    /// plain socket.
    pub async fn accept_login_only(&self, sock: TcpStream) -> Result<(TcpStream, Message), Error> {
        let mut tls = self.accept(sock).await?;
        let msg = tds::read_message(&mut tls)
            .await?
            .ok_or_else(|| Error::Tls("connection closed before LOGIN7".into()))?;
        let (prelogin, _) = tls.into_inner();
        Ok((prelogin.inner, msg))
    }
}

/// Wraps handshake bytes in PRELOGIN packets; passes bytes through after.
pub struct Prelogin<S> {
    inner: S,
    handshake_done: bool,
    /// Bytes left in the PRELOGIN packet being read.
    remaining: usize,
    header: [u8; HEADER_LEN],
    header_read: usize,
    /// Packets waiting to be written.
    pending: Vec<u8>,
    written: usize,
}

impl<S> Prelogin<S> {
    fn new(inner: S) -> Self {
        Prelogin {
            inner,
            handshake_done: false,
            remaining: 0,
            header: [0; HEADER_LEN],
            header_read: 0,
            pending: Vec::new(),
            written: 0,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Prelogin<S> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Prelogin<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.handshake_done {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        while this.remaining == 0 {
            while this.header_read < HEADER_LEN {
                let mut hb = ReadBuf::new(&mut this.header[this.header_read..]);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut hb))?;
                let n = hb.filled().len();
                if n == 0 {
                    return Poll::Ready(Ok(()));
                }
                this.header_read += n;
            }
            this.header_read = 0;
            if this.header[0] != packet_type::PRELOGIN {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "expected a PRELOGIN packet during the TLS handshake, got type {:#04x}",
                        this.header[0]
                    ),
                )));
            }
            let len = u16::from_be_bytes([this.header[2], this.header[3]]) as usize;
            this.remaining = len.saturating_sub(HEADER_LEN);
        }
        let want = this.remaining.min(buf.remaining());
        let mut limited = ReadBuf::new(buf.initialize_unfilled_to(want));
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut limited))?;
        let n = limited.filled().len();
        buf.advance(n);
        this.remaining -= n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Prelogin<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        if this.handshake_done {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        for chunk in data.chunks(4096 - HEADER_LEN) {
            let len = (chunk.len() + HEADER_LEN) as u16;
            this.pending.push(packet_type::PRELOGIN);
            this.pending.push(tds::STATUS_EOM);
            this.pending.extend_from_slice(&len.to_be_bytes());
            this.pending.extend_from_slice(&[0, 0, 1, 0]);
            this.pending.extend_from_slice(chunk);
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}
