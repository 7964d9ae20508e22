//! One peer-channel connection: a TLS 1.3 client (the dialer) or server (the listener)
//! over an abstract byte stream, driven through rustls's unbuffered API
//! (docs/peer-tls.md, "The channel").
//!
//! Owns the rustls connection, its stream buffers, the peer identity check after the
//! handshake and the reassembly of [`Message`]s. Sans-I/O: stream bytes come in with
//! [`Channel::receive`], bytes to send wait in [`Channel::output`], and the wall clock
//! comes in with every call. It never sends an application message before the handshake
//! completed and the peer's certificate named a node of the grid, never buffers more
//! than [`MAX_INCOMING`] bytes, and never panics on bytes from the stream.

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use pki_types::UnixTime;
use rustls::client::{ClientConnectionData, Resumption, UnbufferedClientConnection};
use rustls::server::{
    NoServerSessionStorage, ServerConnectionData, UnbufferedServerConnection, WebPkiClientVerifier,
};
use rustls::time_provider::TimeProvider;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, Error, RootCertStore, ServerConfig,
};

use crate::exporter::ExporterCapture;
use crate::identity::{peer_node, CertSummary, Credentials, NodeId, PeerIdentityError};
use crate::keys::Chain;
use crate::message::{Message, MessageError, Reader};
use crate::rng::Csprng;

/// The ALPN protocol of the peer channel (offered; a peer without ALPN is served too).
pub const ALPN: &[u8] = b"weft-peer/1";
/// TCP port of the peer channel (Weave's control port), on the uplink address.
pub const PORT: u16 = 6783;
/// Received bytes held at most (a TLS record is at most 16 KiB + 256 + 5).
pub const MAX_INCOMING: usize = 40 * 1024;

/// The wall clock rustls checks certificate validity against; set from the time every
/// call brings (0: unknown, and then every certificate check fails).
#[derive(Debug, Default)]
pub struct WallClock(AtomicU64);

impl WallClock {
    pub fn set(&self, unix_secs: Option<u64>) {
        self.0.store(unix_secs.unwrap_or(0), Ordering::Relaxed);
    }
}

impl TimeProvider for WallClock {
    fn current_time(&self) -> Option<UnixTime> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            secs => Some(UnixTime::since_unix_epoch(core::time::Duration::from_secs(
                secs,
            ))),
        }
    }
}

/// This node's TLS configurations, built once from its checked credentials (a clone
/// shares them).
#[derive(Clone)]
pub struct TlsContext {
    creds: Credentials,
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    clock: Arc<WallClock>,
}

impl fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsContext")
            .field("creds", &self.creds)
            .finish_non_exhaustive()
    }
}

impl TlsContext {
    /// Client and server configurations: TLS 1.3 only, weft's provider over `rng`,
    /// the grid CA as the only trust anchor, client certificates required, no session
    /// resumption (every connection is a full handshake with fresh X25519 keys).
    pub fn new(creds: Credentials, rng: &'static Csprng) -> Result<TlsContext, Error> {
        let provider = Arc::new(crate::provider::provider(rng));
        let clock = Arc::new(WallClock::default());
        let mut roots = RootCertStore::empty();
        roots.add(creds.ca().clone())?;
        let roots = Arc::new(roots);

        let mut client = ClientConfig::builder_with_details(provider.clone(), clock.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(creds.chain().to_vec(), creds.key())?;
        client.resumption = Resumption::disabled();
        client.alpn_protocols = vec![ALPN.to_vec()];

        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| Error::General(alloc::format!("client verifier: {e}")))?;
        let mut server = ServerConfig::builder_with_details(provider, clock.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(creds.chain().to_vec(), creds.key())?;
        server.session_storage = Arc::new(NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        server.alpn_protocols = vec![ALPN.to_vec()];

        Ok(TlsContext {
            creds,
            client: Arc::new(client),
            server: Arc::new(server),
            clock,
        })
    }

    pub fn credentials(&self) -> &Credentials {
        &self.creds
    }
}

/// Why a handshake failed, as counted (`status.peer_tls.refused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsFailure {
    /// The peer's certificate does not chain to the grid CA (another CA, self-signed,
    /// bad signature).
    UnknownCa,
    /// The dialed peer's certificate is not for the node dialed (another node or grid).
    WrongName,
    /// The certificate is expired or not yet valid (or the clock is unknown).
    Expired,
    /// The peer presented no certificate.
    NoCertificate,
    /// The peer refused us with an alert (it did not accept our certificate, ...).
    PeerAlert,
    /// Nothing in common (no TLS 1.3, no shared suite, group or signature scheme).
    Incompatible,
    /// Anything else the TLS layer refused (malformed or unexpected messages).
    Protocol,
}

impl TlsFailure {
    pub const ALL: [TlsFailure; 7] = [
        TlsFailure::UnknownCa,
        TlsFailure::WrongName,
        TlsFailure::Expired,
        TlsFailure::NoCertificate,
        TlsFailure::PeerAlert,
        TlsFailure::Incompatible,
        TlsFailure::Protocol,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            TlsFailure::UnknownCa => "unknown_ca",
            TlsFailure::WrongName => "wrong_name",
            TlsFailure::Expired => "expired",
            TlsFailure::NoCertificate => "no_certificate",
            TlsFailure::PeerAlert => "peer_alert",
            TlsFailure::Incompatible => "incompatible",
            TlsFailure::Protocol => "protocol",
        }
    }

    fn of(e: &Error) -> TlsFailure {
        match e {
            Error::InvalidCertificate(c) => match c {
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => TlsFailure::Expired,
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => TlsFailure::WrongName,
                _ => TlsFailure::UnknownCa,
            },
            Error::FailedToGetCurrentTime => TlsFailure::Expired,
            Error::NoCertificatesPresented => TlsFailure::NoCertificate,
            Error::AlertReceived(AlertDescription::CertificateRequired) => TlsFailure::PeerAlert,
            Error::AlertReceived(_) => TlsFailure::PeerAlert,
            Error::PeerIncompatible(_) => TlsFailure::Incompatible,
            _ => TlsFailure::Protocol,
        }
    }
}

/// Why a channel closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The handshake failed.
    Handshake(TlsFailure),
    /// The handshake completed but the certificate names no acceptable node.
    Identity(PeerIdentityError),
    /// The TLS layer failed after the handshake (a bad record: tampering).
    Tls,
    /// The peer sent something that is not a message.
    BadMessage(MessageError),
    /// The peer closed the connection (close_notify or end of stream).
    PeerClosed,
    /// More bytes arrived than any honest peer leaves unprocessed.
    TooMuchInput,
    /// This side closed it.
    Local,
}

/// What happened on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Handshake complete, both sides accepted each other; the peer is `peer`. (The
    /// dialer learns it from the listener's first message, which therefore always
    /// follows the handshake: the listener speaks first.)
    Established { peer: NodeId, cert: CertSummary },
    /// A message from the authenticated peer.
    Message(Message),
    /// The channel is closed for `reason`; the stream should be closed once
    /// [`Channel::output`] is sent (it may hold an alert).
    Closed(CloseReason),
}

enum Conn {
    Client(UnbufferedClientConnection),
    Server(UnbufferedServerConnection),
}

/// One TLS connection with one peer.
pub struct Channel {
    conn: Conn,
    capture: Arc<ExporterCapture>,
    clock: Arc<WallClock>,
    grid: crate::identity::GridName,
    local: NodeId,
    /// The node dialed (client side); the listener learns it from the certificate.
    expected: Option<NodeId>,
    incoming: Vec<u8>,
    outgoing: Vec<u8>,
    /// Application bytes waiting for the handshake to complete.
    app_out: Vec<u8>,
    plaintext: Vec<u8>,
    reader: Reader,
    /// The peer's certificate passed the identity check (this side may send).
    peer: Option<NodeId>,
    /// Both sides accepted each other: the listener once it checked the dialer's
    /// certificate; the dialer once the listener's first message arrived (in TLS 1.3
    /// the client finishes before the server has checked the client certificate).
    confirmed: Option<CertSummary>,
    is_confirmed: bool,
    close_requested: bool,
    closed: Option<CloseReason>,
    events: VecDeque<Event>,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("dialer", &matches!(self.conn, Conn::Client(_)))
            .field("expected", &self.expected)
            .field("peer", &self.peer)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// A client connection to `peer` (the TCP connection is being opened); its first
    /// flight is ready in [`Channel::output`].
    pub fn dial(ctx: &TlsContext, peer: NodeId, unix_now: Option<u64>) -> Result<Channel, Error> {
        let capture = Arc::new(ExporterCapture::default());
        let mut config = ClientConfig::clone(&ctx.client);
        config.key_log = capture.clone();
        let name = ctx
            .creds
            .server_name(peer)
            .ok_or_else(|| Error::General("no server name for the peer".into()))?;
        let conn = UnbufferedClientConnection::new(Arc::new(config), name)?;
        let mut channel = Channel::new(ctx, Conn::Client(conn), capture, Some(peer));
        channel.drive(unix_now);
        Ok(channel)
    }

    /// A server connection for a stream a peer opened.
    pub fn accept(ctx: &TlsContext, unix_now: Option<u64>) -> Result<Channel, Error> {
        let capture = Arc::new(ExporterCapture::default());
        let mut config = ServerConfig::clone(&ctx.server);
        config.key_log = capture.clone();
        let conn = UnbufferedServerConnection::new(Arc::new(config))?;
        let mut channel = Channel::new(ctx, Conn::Server(conn), capture, None);
        channel.drive(unix_now);
        Ok(channel)
    }

    fn new(
        ctx: &TlsContext,
        conn: Conn,
        capture: Arc<ExporterCapture>,
        expected: Option<NodeId>,
    ) -> Channel {
        Channel {
            conn,
            capture,
            clock: ctx.clock.clone(),
            grid: ctx.creds.grid().clone(),
            local: ctx.creds.node(),
            expected,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            app_out: Vec::new(),
            plaintext: Vec::new(),
            reader: Reader::new(),
            peer: None,
            confirmed: None,
            is_confirmed: false,
            close_requested: false,
            closed: None,
            events: VecDeque::new(),
        }
    }

    /// Whether this side dialed.
    pub fn is_dialer(&self) -> bool {
        matches!(self.conn, Conn::Client(_))
    }

    /// The authenticated peer, once established.
    pub fn peer(&self) -> Option<NodeId> {
        self.peer
    }

    /// The node this side dialed.
    pub fn dialed(&self) -> Option<NodeId> {
        self.expected
    }

    /// Both sides accepted each other and the channel is open.
    pub fn is_established(&self) -> bool {
        self.is_confirmed && self.closed.is_none()
    }

    pub fn closed(&self) -> Option<&CloseReason> {
        self.closed.as_ref()
    }

    /// Bytes from the stream.
    pub fn receive(&mut self, bytes: &[u8], unix_now: Option<u64>) {
        if self.closed.is_some() {
            return;
        }
        if self.incoming.len() + bytes.len() > MAX_INCOMING {
            self.close_with(CloseReason::TooMuchInput);
            return;
        }
        self.incoming.extend_from_slice(bytes);
        self.drive(unix_now);
    }

    /// The stream ended (FIN or reset) before a close_notify.
    pub fn stream_closed(&mut self) {
        if self.closed.is_none() {
            self.close_with(CloseReason::PeerClosed);
        }
    }

    /// Queue `message` (sent once the channel is established).
    pub fn send(&mut self, message: Message, unix_now: Option<u64>) {
        if self.closed.is_some() {
            return;
        }
        message.write_to(&mut self.app_out);
        self.drive(unix_now);
    }

    /// Queue application bytes as they are, message or not (tests and fuzzing: what a
    /// peer with our keys but not our code could send).
    pub fn send_raw(&mut self, bytes: &[u8], unix_now: Option<u64>) {
        if self.closed.is_some() {
            return;
        }
        self.app_out.extend_from_slice(bytes);
        self.drive(unix_now);
    }

    /// Close cleanly (close_notify when established).
    pub fn close(&mut self, unix_now: Option<u64>) {
        if self.closed.is_some() {
            return;
        }
        self.close_requested = true;
        self.drive(unix_now);
        self.close_with(CloseReason::Local);
    }

    /// Bytes to write to the stream, in order.
    pub fn output(&self) -> &[u8] {
        &self.outgoing
    }

    /// The first `n` bytes of [`Channel::output`] were written.
    pub fn consumed(&mut self, n: usize) {
        self.outgoing.drain(..n.min(self.outgoing.len()));
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The sleeve chain of `session` from `sender` to `receiver`, exported from this
    /// connection; only once the handshake completed and the peer's certificate passed.
    pub fn export_chain(&self, sender: NodeId, receiver: NodeId, session: u64) -> Option<Chain> {
        if self.peer.is_none() || self.closed.is_some() {
            return None;
        }
        Chain::export(&self.capture, sender, receiver, session).ok()
    }

    fn close_with(&mut self, reason: CloseReason) {
        if self.closed.is_none() {
            self.closed = Some(reason.clone());
            self.app_out.clear();
            self.events.push_back(Event::Closed(reason));
        }
    }

    /// Run rustls on what arrived and what waits to go out, then act on the result.
    fn drive(&mut self, unix_now: Option<u64>) {
        let peer_closed = match self.pump(unix_now) {
            Ok(peer_closed) => peer_closed,
            Err(e) => {
                let reason = match self.is_confirmed {
                    false => CloseReason::Handshake(TlsFailure::of(&e)),
                    true => CloseReason::Tls,
                };
                self.close_with(reason);
                return;
            }
        };
        if !self.handshaking() && self.peer.is_none() && self.closed.is_none() {
            match self.identify() {
                Ok((peer, cert)) => {
                    self.peer = Some(peer);
                    self.confirmed = Some(cert);
                    if !self.is_dialer() {
                        self.confirm();
                    }
                    // Application data queued during the handshake goes out now.
                    if self.pump(unix_now).is_err() {
                        self.close_with(CloseReason::Tls);
                        return;
                    }
                }
                Err(e) => {
                    // The handshake completed, so the refusal is a close_notify.
                    self.app_out.clear();
                    self.close_requested = true;
                    let _ = self.pump(unix_now);
                    self.close_with(CloseReason::Identity(e));
                    return;
                }
            }
        }
        if !self.plaintext.is_empty() {
            self.confirm();
            let bytes = core::mem::take(&mut self.plaintext);
            match self.reader.push(&bytes) {
                Ok(messages) => self.events.extend(messages.into_iter().map(Event::Message)),
                Err(e) => {
                    self.close_with(CloseReason::BadMessage(e));
                    return;
                }
            }
        }
        if peer_closed {
            self.close_with(CloseReason::PeerClosed);
        }
    }

    /// One rustls run; `Ok(true)` when the peer sent close_notify.
    fn pump(&mut self, unix_now: Option<u64>) -> Result<bool, Error> {
        self.clock.set(unix_now);
        let mut io = Io {
            incoming: &mut self.incoming,
            outgoing: &mut self.outgoing,
            app_out: &mut self.app_out,
            plaintext: &mut self.plaintext,
            may_send: self.peer.is_some(),
            close_requested: self.close_requested,
            peer_closed: false,
        };
        let result = match &mut self.conn {
            Conn::Client(c) => drive(c, &mut io),
            Conn::Server(s) => drive(s, &mut io),
        };
        let peer_closed = io.peer_closed;
        self.close_requested = io.close_requested;
        result.map(|()| peer_closed)
    }

    /// Announce the channel as established (once).
    fn confirm(&mut self) {
        if let (Some(peer), Some(cert)) = (self.peer, self.confirmed.take()) {
            self.is_confirmed = true;
            self.events.push_back(Event::Established { peer, cert });
        }
    }

    /// The negotiated suite, group and protocol version (once the handshake got there).
    pub fn negotiated(
        &self,
    ) -> (
        Option<rustls::CipherSuite>,
        Option<rustls::NamedGroup>,
        Option<rustls::ProtocolVersion>,
    ) {
        let common: &rustls::CommonState = match &self.conn {
            Conn::Client(c) => c,
            Conn::Server(s) => s,
        };
        (
            common.negotiated_cipher_suite().map(|s| s.suite()),
            common.negotiated_key_exchange_group().map(|g| g.name()),
            common.protocol_version(),
        )
    }

    fn handshaking(&self) -> bool {
        match &self.conn {
            Conn::Client(c) => c.is_handshaking(),
            Conn::Server(s) => s.is_handshaking(),
        }
    }

    fn identify(&self) -> Result<(NodeId, CertSummary), PeerIdentityError> {
        let certs = match &self.conn {
            Conn::Client(c) => c.peer_certificates(),
            Conn::Server(s) => s.peer_certificates(),
        };
        let leaf = certs
            .and_then(|c| c.first())
            .ok_or(PeerIdentityError::NoCertificate)?;
        let node = peer_node(leaf, &self.grid, self.local, self.expected)?;
        let cert = CertSummary::of(leaf).ok_or(PeerIdentityError::WrongGrid)?;
        Ok((node, cert))
    }
}

/// The buffers one `drive` works on.
struct Io<'a> {
    incoming: &'a mut Vec<u8>,
    outgoing: &'a mut Vec<u8>,
    app_out: &'a mut Vec<u8>,
    plaintext: &'a mut Vec<u8>,
    /// The peer is authenticated: application data may go out.
    may_send: bool,
    close_requested: bool,
    peer_closed: bool,
}

/// The client and server connections' one operation that has no common trait.
trait Process {
    type Data;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn wants_write(&self) -> bool;
}

impl Process for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ClientConnectionData> {
        self.process_tls_records(incoming)
    }
    fn wants_write(&self) -> bool {
        (**self).wants_write()
    }
}

impl Process for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ServerConnectionData> {
        self.process_tls_records(incoming)
    }
    fn wants_write(&self) -> bool {
        (**self).wants_write()
    }
}

/// Encode with a buffer grown to what rustls asks for.
fn append(
    out: &mut Vec<u8>,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) -> Result<(), Error> {
    let start = out.len();
    let mut room = 1024;
    loop {
        out.resize(start + room, 0);
        match write(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(Some(required)) if required > room => room = required,
            Err(_) => {
                out.truncate(start);
                return Err(Error::General("encoding a TLS record".into()));
            }
        }
    }
}

fn encode_err(e: EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

fn encrypt_err(e: EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

/// Run the connection until it needs more input. On an error, encode the alert rustls
/// queued for the peer and read nothing more (rustls would refuse it again).
fn drive<C: Process>(conn: &mut C, io: &mut Io<'_>) -> Result<(), Error> {
    // Each turn consumes input, emits output or stops; the bound only guards against a
    // state machine that does none of these.
    for _ in 0..1024 {
        let UnbufferedStatus { discard, state } = conn.process(io.incoming);
        let mut stop = false;
        match state {
            Err(e) => return Err(flush_alert(conn, io, e)),
            Ok(ConnectionState::EncodeTlsData(mut s)) => {
                append(io.outgoing, |b| s.encode(b).map_err(encode_err))?;
            }
            Ok(ConnectionState::TransmitTlsData(t)) => {
                // The bytes are in `outgoing` already; the caller writes them out.
                t.done();
            }
            Ok(ConnectionState::ReadTraffic(mut r)) => {
                while let Some(record) = r.next_record() {
                    let record = record?;
                    io.plaintext.extend_from_slice(record.payload);
                }
            }
            Ok(ConnectionState::WriteTraffic(mut w)) => {
                if io.may_send && !io.app_out.is_empty() {
                    let data = core::mem::take(io.app_out);
                    append(io.outgoing, |b| w.encrypt(&data, b).map_err(encrypt_err))?;
                }
                if io.close_requested {
                    append(io.outgoing, |b| {
                        w.queue_close_notify(b).map_err(encrypt_err)
                    })?;
                    io.close_requested = false;
                }
                stop = true;
            }
            Ok(ConnectionState::PeerClosed) => io.peer_closed = true,
            Ok(ConnectionState::Closed) => {
                io.peer_closed = true;
                stop = true;
            }
            Ok(ConnectionState::BlockedHandshake) => stop = true,
            // Early data is never accepted (max_early_data_size is 0); anything else
            // rustls may add is not understood.
            Ok(_) => return Err(Error::General("unexpected TLS state".into())),
        }
        io.incoming.drain(..discard.min(io.incoming.len()));
        if stop {
            break;
        }
    }
    Ok(())
}

/// Encode what rustls queued after `error` (its fatal alert), then return `error`.
fn flush_alert<C: Process>(conn: &mut C, io: &mut Io<'_>, error: Error) -> Error {
    while conn.wants_write() {
        // With records queued, rustls hands them out before it reads any input.
        let status = conn.process(io.incoming);
        let Ok(ConnectionState::EncodeTlsData(mut s)) = status.state else {
            break;
        };
        if append(io.outgoing, |b| s.encode(b).map_err(encode_err)).is_err() {
            break;
        }
    }
    error
}

#[cfg(test)]
mod tests;
