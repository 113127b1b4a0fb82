//! MQTT over WebSocket [6]: the handshake (path, subprotocol `mqtt`), and the connection as a
//! byte stream for the reader and writer tasks.
//!
//! Binary frames carry the MQTT bytes; a frame may hold several packets or part of one
//! [MQTT-6.0.0-2]. A text frame closes the connection [MQTT-6.0.0-1]. The server answers with
//! the subprotocol `mqtt` [MQTT-6.0.0-4] (or `mqttv3.1` for MQTT 3.1 clients that offer only
//! that); a handshake that offers neither is refused with 400, another path with 404.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Most bytes one frame the writer sends carries.
const FRAME_BYTES: usize = 256 * 1024;
/// How long a closing connection waits for the client's Close frame after sending its own
/// (the WebSocket closing handshake), so that the client does not write into a closed socket.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Accepts a WebSocket handshake on `stream` for `path`, with messages of at most
/// `max_message` bytes.
pub(crate) async fn accept<S>(
    stream: S,
    path: &str,
    max_message: usize,
) -> Result<WsIo<S>, tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
        .read_buffer_size(16 * 1024);
    let path = path.to_owned();
    // The callback's error type is tungstenite's.
    #[allow(clippy::result_large_err)]
    let callback = move |request: &Request, response: Response| handshake(&path, request, response);
    let ws =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await?;
    Ok(WsIo {
        ws,
        read: Bytes::new(),
        write: BytesMut::new(),
        eof: false,
        linger: None,
    })
}

/// Checks the upgrade request: the path, and a subprotocol for MQTT.
#[allow(clippy::result_large_err)] // the callback's type is tungstenite's
fn handshake(
    path: &str,
    request: &Request,
    mut response: Response,
) -> Result<Response, ErrorResponse> {
    let refuse = |status: StatusCode, message: &str| {
        let mut error = ErrorResponse::new(Some(message.to_owned()));
        *error.status_mut() = status;
        error
    };
    if request.uri().path() != path {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            &format!("MQTT over WebSocket is at {path}\n"),
        ));
    }
    let offered: Vec<String> = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_ascii_lowercase())
        .collect();
    let chosen = ["mqtt", "mqttv3.1"]
        .into_iter()
        .find(|p| offered.iter().any(|o| o == p));
    let Some(chosen) = chosen else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "offer the WebSocket subprotocol \"mqtt\" (Sec-WebSocket-Protocol: mqtt) [MQTT-6.0.0-3]\n",
        ));
    };
    response
        .headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static(chosen));
    Ok(response)
}

/// A WebSocket connection as a byte stream: reads the binary frames' bytes, and writes what
/// is written between two flushes as one binary frame (the writer task flushes after each
/// batch).
pub(crate) struct WsIo<S> {
    ws: WebSocketStream<S>,
    /// What is left of the last frame read.
    read: Bytes,
    /// What is written, not yet sent.
    write: BytesMut,
    eof: bool,
    /// While closing: until when to wait for the client's Close frame.
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
}

fn ws_error(error: tokio_tungstenite::tungstenite::Error) -> io::Error {
    io::Error::other(error)
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsIo<S> {
    /// Hands what was written to the WebSocket as one frame.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write.is_empty() {
            return Poll::Ready(Ok(()));
        }
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(ws_error)?;
        let frame = self.write.split().freeze();
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(frame))
            .map_err(ws_error)?;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.read.is_empty() {
                let n = this.read.len().min(buf.remaining());
                buf.put_slice(this.read.get(..n).unwrap_or_default());
                this.read.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.read = data,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text frame: MQTT over WebSocket is in binary frames [MQTT-6.0.0-1]",
                    )));
                }
                Some(Ok(Message::Close(_))) | None => this.eof = true,
                Some(Err(error)) => return Poll::Ready(Err(ws_error(error))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write.len() >= FRAME_BYTES {
            ready!(this.poll_send(cx))?;
        }
        this.write.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write.len() >= FRAME_BYTES {
            ready!(this.poll_send(cx))?;
        }
        let mut n = 0;
        for buf in bufs {
            this.write.extend_from_slice(buf);
            n += buf.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.ws).poll_flush(cx).map_err(ws_error)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.linger.is_none() {
            ready!(this.poll_send(cx))?;
            ready!(Pin::new(&mut this.ws).poll_close(cx)).map_err(ws_error)?;
            this.linger = Some(Box::pin(tokio::time::sleep(CLOSE_LINGER)));
        }
        // The closing handshake: what the client still sends, up to its Close frame (or the
        // end of the stream), is read and dropped, for a while.
        if this.eof {
            return Poll::Ready(Ok(()));
        }
        loop {
            if let Some(linger) = &mut this.linger
                && linger.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Close(_)) | Err(_)) | None => {
                    this.eof = true;
                    return Poll::Ready(Ok(()));
                }
                Some(Ok(_)) => {}
            }
        }
    }
}
