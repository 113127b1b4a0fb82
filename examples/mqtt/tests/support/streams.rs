//! MQTT over other streams than plain TCP, for the listener tests: test certificates (rcgen),
//! a TLS client, a WebSocket client, and an MQTT client over any byte stream.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use hermes_mqtt::codec::{MAX_PACKET_SIZE, decode, encode};
use hermes_mqtt::{ConnectReturnCode, Packet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::{TIMEOUT, connect_packet};

/// A test CA and a server certificate it signed for `localhost` and `127.0.0.1`, as PEM
/// files in a temporary directory.
pub struct TestCerts {
    _dir: tempfile::TempDir,
    /// The CA's certificate (what a client trusts: mosquitto_sub --cafile).
    pub ca: PathBuf,
    /// The server's certificate chain.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
    ca_der: Vec<u8>,
}

impl TestCerts {
    /// Generates them.
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "hermes-mqtt test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        Self {
            ca: write("ca.pem", ca_cert.pem()),
            cert: write("cert.pem", server.pem()),
            key: write("key.pem", server_key.serialize_pem()),
            ca_der: ca_cert.der().to_vec(),
            _dir: dir,
        }
    }

    /// A file in the same directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.ca.parent().unwrap_or(Path::new(".")).join(name)
    }

    /// A TLS connection to `addr` that trusts the test CA.
    pub async fn connect(&self, addr: SocketAddr) -> TlsStream<TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(self.ca_der.clone()))
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        timeout(TIMEOUT, connector.connect(name, tcp))
            .await
            .expect("TLS handshake in time")
            .expect("TLS handshake")
    }
}

/// An MQTT client over any byte stream (TLS, say).
pub struct StreamClient<S> {
    io: S,
    buf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> StreamClient<S> {
    /// Sends CONNECT with a clean session as `client_id` on `io`; the broker must accept.
    pub async fn connect(io: S, client_id: &str) -> Self {
        let mut client = Self {
            io,
            buf: BytesMut::new(),
        };
        client.send(connect_packet(client_id)).await;
        match client.recv().await {
            Packet::ConnAck(ack) => assert_eq!(ack.code, ConnectReturnCode::Accepted),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        client
    }

    /// Sends a packet.
    pub async fn send(&mut self, packet: impl Into<Packet>) {
        let mut wire = BytesMut::new();
        encode(&packet.into(), &mut wire).unwrap();
        self.io.write_all(&wire).await.unwrap();
        self.io.flush().await.unwrap();
    }

    /// The next packet, within [`TIMEOUT`].
    pub async fn recv(&mut self) -> Packet {
        timeout(TIMEOUT, async {
            loop {
                if let Some(packet) = decode(&mut self.buf, MAX_PACKET_SIZE).unwrap() {
                    return packet;
                }
                let n = self.io.read_buf(&mut self.buf).await.unwrap();
                assert!(n > 0, "the broker closed the connection");
            }
        })
        .await
        .expect("a packet within the timeout")
    }
}

/// An MQTT client over WebSocket: each packet in a binary frame of its own, unless sent with
/// [`WsClient::send_frame`].
pub struct WsClient<S> {
    ws: WebSocketStream<S>,
    buf: BytesMut,
    /// The subprotocol the server chose.
    pub protocol: Option<String>,
}

/// Opens a WebSocket on `stream` to `url` offering subprotocol `mqtt`.
pub async fn ws_handshake<S: AsyncRead + AsyncWrite + Unpin>(stream: S, url: &str) -> WsClient<S> {
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "mqtt".parse().unwrap());
    let (ws, response) = timeout(TIMEOUT, tokio_tungstenite::client_async(request, stream))
        .await
        .expect("WebSocket handshake in time")
        .expect("WebSocket handshake");
    let protocol = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    WsClient {
        ws,
        buf: BytesMut::new(),
        protocol,
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsClient<S> {
    /// Sends CONNECT as `client_id`; the broker must accept.
    pub async fn connect(&mut self, client_id: &str) {
        self.send(connect_packet(client_id)).await;
        match self.recv().await {
            Packet::ConnAck(ack) => assert_eq!(ack.code, ConnectReturnCode::Accepted),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Sends a packet in a binary frame.
    pub async fn send(&mut self, packet: impl Into<Packet>) {
        let mut wire = BytesMut::new();
        encode(&packet.into(), &mut wire).unwrap();
        self.send_frame(Message::Binary(wire.freeze())).await;
    }

    /// Sends a frame as it is.
    pub async fn send_frame(&mut self, frame: Message) {
        self.ws.send(frame).await.unwrap();
    }

    /// The next packet, within [`TIMEOUT`].
    pub async fn recv(&mut self) -> Packet {
        timeout(TIMEOUT, async {
            loop {
                if let Some(packet) = decode(&mut self.buf, MAX_PACKET_SIZE).unwrap() {
                    return packet;
                }
                match self.ws.next().await {
                    Some(Ok(Message::Binary(data))) => self.buf.extend_from_slice(&data),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    other => panic!("expected a binary frame, got {other:?}"),
                }
            }
        })
        .await
        .expect("a packet within the timeout")
    }

    /// Whether the server closes the WebSocket (or the connection) within [`TIMEOUT`].
    pub async fn closed(&mut self) -> bool {
        timeout(TIMEOUT, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return true,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await
        .unwrap_or(false)
    }
}

/// Sends a raw HTTP request to `addr` and returns the status line of the answer.
pub async fn http_status(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = timeout(TIMEOUT, stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    answer.lines().next().unwrap_or_default().to_owned()
}

/// A WebSocket upgrade request for `path`, with `protocol` offered if any.
pub fn upgrade_request(path: &str, protocol: Option<&str>) -> String {
    let protocol = protocol
        .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
        .unwrap_or_default();
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{protocol}\r\n"
    )
}

/// A client that sends and receives MQTT packets, whatever carries them.
#[allow(async_fn_in_trait)] // test code: no Send bound needed
pub trait PacketIo {
    /// Sends a packet.
    async fn send_packet(&mut self, packet: Packet);
    /// The next packet, within [`TIMEOUT`].
    async fn recv_packet(&mut self) -> Packet;

    /// Subscribes to `topic_name` at QoS 1 and waits for the SUBACK.
    async fn subscribe_to(&mut self, topic_name: &str) {
        self.send_packet(
            super::subscribe_packet(1, &[(topic_name, hermes_mqtt::QoS::AtLeastOnce)]).into(),
        )
        .await;
        let ack = self.recv_packet().await;
        assert!(
            matches!(ack, Packet::SubAck(_)),
            "expected SUBACK, got {ack:?}"
        );
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> PacketIo for StreamClient<S> {
    async fn send_packet(&mut self, packet: Packet) {
        self.send(packet).await;
    }

    async fn recv_packet(&mut self) -> Packet {
        self.recv().await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> PacketIo for WsClient<S> {
    async fn send_packet(&mut self, packet: Packet) {
        self.send(packet).await;
    }

    async fn recv_packet(&mut self) -> Packet {
        self.recv().await
    }
}
