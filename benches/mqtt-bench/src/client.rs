//! A minimal MQTT 3.1.1 client connection: a TCP stream, a read buffer that the hermes-mqtt
//! decoder frames, and a write buffer that the caller fills and flushes when it chooses, so
//! that packets are batched and pipelined without a client library in the way.
//!
//! Nothing here panics on what the broker sends: a malformed packet is a [`ClientError`].

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::BytesMut;
use hermes_mqtt::codec::{self, DecodeError};
use hermes_mqtt::{ConnAck, Connect, ConnectReturnCode, MqttString, Packet};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// The largest packet accepted from a broker.
pub const MAX_PACKET: usize = 1 << 20;

/// Connections numbered from here on connect from addresses of their own (see
/// [`Target::spread_sources`]).
pub const SPREAD_FROM: u64 = 16_000;

/// How much is read at most in one go.
const READ_CHUNK: usize = 64 * 1024;

/// Where to connect, and from where.
#[derive(Debug, Clone)]
pub struct Target {
    /// The broker.
    pub addr: SocketAddr,
    /// Connect from many loopback addresses (127.x.y.z) when the broker is on loopback: each
    /// source address has its own ephemeral ports, so tens of thousands of connections (and
    /// the TIME_WAIT of earlier runs) never exhaust them. Connections numbered below
    /// [`SPREAD_FROM`] use the default source all the same: binding costs a little on every
    /// connect, and the default source has ports enough for them.
    pub spread_sources: bool,
    /// Differs between runs, so that one run's source addresses and client identifiers are
    /// not the last run's.
    pub salt: u64,
    /// The keep alive asked for in CONNECT, in seconds.
    pub keep_alive: u16,
}

impl Target {
    /// The source address for connection number `index`, if it is to be bound.
    fn source(&self, index: u64) -> Option<IpAddr> {
        let IpAddr::V4(ip) = self.addr.ip() else {
            return None;
        };
        if !self.spread_sources || !ip.is_loopback() || index < SPREAD_FROM {
            return None;
        }
        let k = self.salt.wrapping_mul(7919).wrapping_add(index);
        let a = 1 + (k / 62_500) % 254;
        let b = (k / 250) % 250;
        let c = 1 + k % 250;
        Some(IpAddr::V4(Ipv4Addr::new(127, a as u8, b as u8, c as u8)))
    }

    /// A CONNECT for `client_id`.
    pub fn connect_packet(
        &self,
        client_id: &str,
        clean_session: bool,
    ) -> Result<Connect, ClientError> {
        let id = MqttString::from_bytes(bytes::Bytes::copy_from_slice(client_id.as_bytes()))
            .map_err(|e| ClientError::Usage(format!("client id {client_id:?}: {e}")))?;
        let mut connect = Connect::new(id);
        connect.clean_session = clean_session;
        connect.keep_alive = self.keep_alive;
        Ok(connect)
    }
}

/// What went wrong with a connection.
#[derive(Debug)]
pub enum ClientError {
    /// A socket error.
    Io(io::Error),
    /// The broker sent bytes that are not an MQTT 3.1.1 packet.
    Decode(DecodeError),
    /// The broker closed the connection.
    Closed,
    /// The broker refused the CONNECT.
    Refused(ConnectReturnCode),
    /// The broker sent a packet that makes no sense here.
    Protocol(String),
    /// Something took longer than allowed.
    Timeout(&'static str),
    /// The generator was asked for something impossible.
    Usage(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "socket: {e}"),
            Self::Decode(e) => write!(f, "malformed packet from the broker: {e}"),
            Self::Closed => f.write_str("the broker closed the connection"),
            Self::Refused(code) => write!(f, "CONNACK refused the connection: {code:?}"),
            Self::Protocol(what) => write!(f, "protocol: {what}"),
            Self::Timeout(what) => write!(f, "timed out: {what}"),
            Self::Usage(what) => f.write_str(what),
        }
    }
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<DecodeError> for ClientError {
    fn from(e: DecodeError) -> Self {
        Self::Decode(e)
    }
}

/// One connection to the broker.
pub struct Conn {
    /// The socket. Readiness is awaited on it directly (`readable`, `writable`), so that one
    /// task can wait for input, room to write and its own wake-ups at once.
    pub stream: TcpStream,
    rbuf: BytesMut,
    /// Encoded packets not yet written.
    pub wbuf: BytesMut,
    /// How much room to make before a read: grows while reads fill it.
    chunk: usize,
}

impl Conn {
    /// Connects, sends `connect` and waits for the CONNACK, all within `timeout`.
    pub async fn open(
        target: &Target,
        index: u64,
        connect: &Connect,
        timeout: Duration,
    ) -> Result<(Self, ConnAck), ClientError> {
        match tokio::time::timeout(timeout, Self::open_inner(target, index, connect)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout("connecting (TCP connect and CONNACK)")),
        }
    }

    async fn open_inner(
        target: &Target,
        index: u64,
        connect: &Connect,
    ) -> Result<(Self, ConnAck), ClientError> {
        let socket = match target.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if let Some(source) = target.source(index) {
            socket.bind(SocketAddr::new(source, 0))?;
        }
        let stream = socket.connect(target.addr).await?;
        stream.set_nodelay(true)?;
        let mut conn = Self {
            stream,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            chunk: 2048,
        };
        conn.queue(&Packet::Connect(Box::new(connect.clone())))?;
        conn.flush().await?;
        match conn.recv().await? {
            Packet::ConnAck(ack) if ack.code == ConnectReturnCode::Accepted => Ok((conn, ack)),
            Packet::ConnAck(ack) => Err(ClientError::Refused(ack.code)),
            other => Err(ClientError::Protocol(format!(
                "{} before CONNACK",
                other.packet_type()
            ))),
        }
    }

    /// Appends `packet` to the write buffer.
    pub fn queue(&mut self, packet: &Packet) -> Result<(), ClientError> {
        codec::encode(packet, &mut self.wbuf)
            .map_err(|e| ClientError::Usage(format!("cannot encode {}: {e}", packet.packet_type())))
    }

    /// Writes the whole write buffer, waiting for room as needed.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Writes what the socket takes now without waiting.
    pub fn try_flush(&mut self) -> Result<(), ClientError> {
        while !self.wbuf.is_empty() {
            match self.stream.try_write(&self.wbuf) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(n) => {
                    let _ = self.wbuf.split_to(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
        if self.wbuf.is_empty() && self.wbuf.capacity() > 4 * READ_CHUNK {
            self.wbuf = BytesMut::new();
        }
        Ok(())
    }

    /// Reads what the socket has now without waiting: `Ok(false)` if it had nothing. One read
    /// per call: tokio keeps the socket readable until a read would block, so a caller that
    /// comes back soon loses nothing.
    pub fn try_read(&mut self) -> Result<bool, ClientError> {
        if self.rbuf.capacity() - self.rbuf.len() < self.chunk / 2 {
            self.rbuf.reserve(self.chunk);
        }
        let room = self.rbuf.capacity() - self.rbuf.len();
        match self.stream.try_read_buf(&mut self.rbuf) {
            Ok(0) => Err(ClientError::Closed),
            Ok(n) => {
                // A busy connection reads in larger chunks; an idle one keeps small buffers.
                if n == room && self.chunk < READ_CHUNK {
                    self.chunk *= 2;
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The next whole packet already read, if any.
    pub fn decode(&mut self) -> Result<Option<Packet>, ClientError> {
        Ok(codec::decode(&mut self.rbuf, MAX_PACKET)?)
    }

    /// Waits for the next packet.
    pub async fn recv(&mut self) -> Result<Packet, ClientError> {
        loop {
            if let Some(packet) = self.decode()? {
                return Ok(packet);
            }
            self.stream.readable().await?;
            self.try_read()?;
        }
    }

    /// Lets go of buffers an idle connection does not need.
    pub fn shrink(&mut self) {
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
        if self.wbuf.is_empty() {
            self.wbuf = BytesMut::new();
        }
    }

    /// Sends DISCONNECT and waits (at most `linger`) for the broker to close its side first,
    /// so that TIME_WAIT stays with the broker rather than with the generator's ports.
    pub async fn disconnect(mut self, linger: Duration) {
        if self.queue(&Packet::Disconnect).is_ok() {
            let _ = tokio::time::timeout(linger, self.until_closed()).await;
        }
    }

    /// Flushes, then reads and drops whatever comes until the broker closes the connection.
    async fn until_closed(&mut self) -> Result<(), ClientError> {
        self.flush().await?;
        loop {
            self.stream.readable().await?;
            self.try_read()?;
            self.rbuf.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A "broker" that reads the CONNECT and answers `reply`, then waits.
    async fn broker_answering(reply: &'static [u8]) -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut buf = [0; 256];
            let _ = stream.read(&mut buf).await;
            let _ = stream.write_all(reply).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        });
        Target {
            addr,
            spread_sources: true,
            salt: 1,
            keep_alive: 60,
        }
    }

    async fn open(reply: &'static [u8]) -> Result<ConnAck, ClientError> {
        let target = broker_answering(reply).await;
        let connect = target.connect_packet("t", true)?;
        Conn::open(&target, 0, &connect, Duration::from_secs(5))
            .await
            .map(|(_, ack)| ack)
    }

    #[tokio::test]
    async fn accepted() {
        let ack = open(&[0x20, 0x02, 0x01, 0x00]).await.expect("accepted");
        assert!(ack.session_present);
    }

    #[tokio::test]
    async fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(
            open(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF]).await,
            Err(ClientError::Decode(_))
        ));
        // A CONNACK whose remaining length is wrong.
        assert!(matches!(
            open(&[0x20, 0x05, 0, 0, 0, 0, 0]).await,
            Err(ClientError::Decode(_))
        ));
    }

    #[tokio::test]
    async fn refused_closed_and_out_of_order() {
        assert!(matches!(
            open(&[0x20, 0x02, 0x00, 0x05]).await,
            Err(ClientError::Refused(ConnectReturnCode::NotAuthorized))
        ));
        assert!(matches!(open(&[]).await, Err(ClientError::Closed)));
        assert!(matches!(
            open(&[0xD0, 0x00]).await,
            Err(ClientError::Protocol(_))
        ));
    }

    #[test]
    fn source_addresses() {
        let target = Target {
            addr: "127.0.0.1:1883".parse().expect("address"),
            spread_sources: true,
            salt: 7,
            keep_alive: 60,
        };
        assert_eq!(target.source(0), None);
        let ip = target.source(SPREAD_FROM).expect("spread");
        assert!(ip.is_loopback());
        assert_ne!(target.source(SPREAD_FROM + 1), Some(ip));
        let remote = Target {
            addr: "192.0.2.1:1883".parse().expect("address"),
            ..target
        };
        assert_eq!(remote.source(SPREAD_FROM), None);
    }
}
