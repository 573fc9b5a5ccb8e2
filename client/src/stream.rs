//! The bytes under a broker connection: plain TCP, or TLS over TCP, split into a read half
//! and a write half so that reads never wait on writes.
//!
//! The plain halves are tokio's owned TCP halves, as before TLS existed: a plain connection
//! pays one enum match per poll and nothing else. A TLS stream is one rustls session, split
//! with `tokio::io::split` (a lock taken per poll, never across an await).
//!
//! A TLS write may accept bytes into the session and return before the session has put them
//! on the socket (the socket was full). Those bytes leave only with the next write or a flush,
//! so the write half remembers that a flush is owed ([`WriteHalf::needs_flush`]) and the
//! connection task flushes once its buffer is empty.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A connected stream, before the split.
pub(crate) enum BrokerStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl BrokerStream {
    pub(crate) fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            BrokerStream::Plain(stream) => {
                let (read, write) = stream.into_split();
                (ReadHalf::Plain(read), WriteHalf::Plain(write))
            }
            BrokerStream::Tls(stream) => {
                let (read, write) = tokio::io::split(*stream);
                (ReadHalf::Tls(read), WriteHalf::Tls { half: write, unflushed: false })
            }
        }
    }
}

pub(crate) enum ReadHalf {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<TlsStream<TcpStream>>),
}

pub(crate) enum WriteHalf {
    Plain(OwnedWriteHalf),
    Tls {
        half: tokio::io::WriteHalf<TlsStream<TcpStream>>,
        /// Bytes were written since the last flush; some may still sit in the session.
        unflushed: bool,
    },
}

impl WriteHalf {
    /// True when bytes written may still wait in the TLS session for a flush. Never for
    /// plain TCP, which buffers nothing.
    pub(crate) fn needs_flush(&self) -> bool {
        matches!(self, WriteHalf::Tls { unflushed: true, .. })
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Plain(half) => Pin::new(half).poll_read(cx, buf),
            ReadHalf::Tls(half) => Pin::new(half).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Plain(half) => Pin::new(half).poll_write(cx, buf),
            WriteHalf::Tls { half, unflushed } => {
                let written = ready!(Pin::new(half).poll_write(cx, buf));
                if matches!(written, Ok(n) if n > 0) {
                    *unflushed = true;
                }
                Poll::Ready(written)
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Plain(half) => Pin::new(half).poll_write_vectored(cx, bufs),
            WriteHalf::Tls { half, unflushed } => {
                let written = ready!(Pin::new(half).poll_write_vectored(cx, bufs));
                if matches!(written, Ok(n) if n > 0) {
                    *unflushed = true;
                }
                Poll::Ready(written)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WriteHalf::Plain(half) => half.is_write_vectored(),
            WriteHalf::Tls { half, .. } => half.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(half) => Pin::new(half).poll_flush(cx),
            WriteHalf::Tls { half, unflushed } => {
                ready!(Pin::new(half).poll_flush(cx))?;
                *unflushed = false;
                Poll::Ready(Ok(()))
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(half) => Pin::new(half).poll_shutdown(cx),
            WriteHalf::Tls { half, .. } => Pin::new(half).poll_shutdown(cx),
        }
    }
}
