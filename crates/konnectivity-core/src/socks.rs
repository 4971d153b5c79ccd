//! SOCKS5 (RFC 1928) for the server's SOCKS5 frontend, sans-IO: the client's method
//! greeting, its request, the replies, and the header of UDP ASSOCIATE datagrams
//! (§7), and RFC 1929 username/password authentication (the sub-negotiation and the
//! list of users it is checked against, in constant time). Only what the frontend
//! serves is accepted: method 0 (no authentication) or 2 (username/password), the
//! CONNECT and UDP ASSOCIATE commands, to an IPv4, IPv6 or domain address, and
//! unfragmented datagrams (FRAG 0); every other input is a typed [`SocksError`] that
//! says which reply (if any) the client gets. Nothing here panics on peer input.
//!
//! The parsers are incremental: given the bytes read so far they return `Ok(None)`
//! until the message is complete, then the message and how many bytes it used (a
//! client may pipeline its request, or data, behind the greeting).
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The protocol version byte.
pub const VERSION: u8 = 5;
/// Method 0: no authentication required.
pub const NO_AUTH: u8 = 0x00;
/// Method 2: username/password (RFC 1929).
pub const USER_PASS: u8 = 0x02;
/// Method 0xFF: no acceptable methods.
pub const NO_ACCEPTABLE_METHOD: u8 = 0xFF;

/// The version byte of RFC 1929's username/password messages.
const AUTH_VERSION: u8 = 0x01;

/// The `ATYP` codes of an address (RFC 1928 §5).
mod atyp {
    pub(super) const IPV4: u8 = 0x01;
    pub(super) const DOMAIN: u8 = 0x03;
    pub(super) const IPV6: u8 = 0x04;
}

/// The `CMD` codes of a request (RFC 1928 §4).
mod cmd {
    pub(super) const CONNECT: u8 = 0x01;
    pub(super) const UDP_ASSOCIATE: u8 = 0x03;
}

/// The client's first message: the authentication methods it offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// The offered method codes (1 to 255 of them).
    pub methods: Vec<u8>,
}

impl Greeting {
    /// The method the server answers with: [`NO_AUTH`] when offered (the only one
    /// served), else [`NO_ACCEPTABLE_METHOD`] (the client must then close).
    pub fn choose(&self) -> u8 {
        self.choose_with(false)
    }

    /// The method the server answers with when `password` authentication is required
    /// ([`USER_PASS`] if offered; method 0 is then never chosen) or not ([`NO_AUTH`]).
    pub fn choose_with(&self, password: bool) -> u8 {
        let wanted = if password { USER_PASS } else { NO_AUTH };
        if self.methods.contains(&wanted) {
            wanted
        } else {
            NO_ACCEPTABLE_METHOD
        }
    }
}

/// An RFC 1929 request: `VER(1) ULEN UNAME PLEN PASSWD`.
#[derive(Clone, PartialEq, Eq)]
pub struct UserPass {
    /// UNAME (1 to 255 bytes).
    pub user: Vec<u8>,
    /// PASSWD (0 to 255 bytes).
    pub password: Vec<u8>,
}

impl fmt::Debug for UserPass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserPass")
            .field("user", &String::from_utf8_lossy(&self.user))
            .finish_non_exhaustive()
    }
}

/// Parses an RFC 1929 username/password request (incremental, like the others).
pub fn parse_user_pass(buf: &[u8]) -> Parsed<UserPass> {
    let head = version_and_count(
        buf,
        AUTH_VERSION,
        SocksError::AuthVersion,
        SocksError::NoUser,
    );
    let Some(ulen) = head? else {
        return Ok(None);
    };
    let uend = 2 + usize::from(ulen);
    let Some(&plen) = buf.get(uend) else {
        return Ok(None);
    };
    let end = uend + 1 + usize::from(plen);
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((
        UserPass {
            user: buf[2..uend].to_vec(),
            password: buf[uend + 1..end].to_vec(),
        },
        end,
    )))
}

impl UserPass {
    /// The client's RFC 1929 request (`01 ULEN UNAME PLEN PASSWD`), or `None` when the
    /// user is empty or either field is longer than 255 bytes.
    pub fn encode(&self) -> Option<Vec<u8>> {
        let ulen = u8::try_from(self.user.len()).ok().filter(|&n| n > 0)?;
        let plen = u8::try_from(self.password.len()).ok()?;
        let mut out = Vec::with_capacity(3 + self.user.len() + self.password.len());
        out.extend_from_slice(&[AUTH_VERSION, ulen]);
        out.extend_from_slice(&self.user);
        out.push(plen);
        out.extend_from_slice(&self.password);
        Some(out)
    }
}

/// The RFC 1929 reply: `01 00` accepted, `01 01` rejected (the client must close).
pub const fn user_pass_reply(accepted: bool) -> [u8; 2] {
    [AUTH_VERSION, if accepted { 0 } else { 1 }]
}

/// The users a `--socks5-auth-file` allows: lines `user:password` (the password is
/// everything after the first `:`), blank lines and `#` comments ignored.
#[derive(Clone, Default)]
pub struct Users {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Users({} entries)", self.entries.len())
    }
}

impl Users {
    /// Parses the file's text; an error names the line, never a password.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let Some((user, password)) = line.split_once(':') else {
                return Err(format!("line {}: expected user:password", i + 1));
            };
            if user.is_empty() || user.len() > 255 || password.is_empty() || password.len() > 255 {
                return Err(format!(
                    "line {}: user and password must each be 1 to 255 bytes",
                    i + 1
                ));
            }
            entries.push((user.as_bytes().to_vec(), password.as_bytes().to_vec()));
        }
        if entries.is_empty() {
            return Err("no user:password line".to_owned());
        }
        Ok(Self { entries })
    }

    /// How many users are allowed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the list is empty (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `c` names a user with its password. Every entry is compared, each in
    /// constant time for its length, so the time taken does not tell which user
    /// exists or how much of a password matched.
    pub fn check(&self, c: &UserPass) -> bool {
        let mut ok = 0u8;
        for (user, password) in &self.entries {
            ok |= ct_eq(user, &c.user) & ct_eq(password, &c.password);
        }
        ok == 1
    }
}

/// 1 when equal, else 0, without a data-dependent branch or early exit.
fn ct_eq(a: &[u8], b: &[u8]) -> u8 {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    let diff = std::hint::black_box(diff);
    u8::from(diff == 0)
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// CONNECT (1): a TCP connection to the destination.
    Connect,
    /// UDP ASSOCIATE (3): a UDP relay; the destination is where the client will send
    /// its datagrams from (all zeros when it does not know yet).
    UdpAssociate,
}

/// A client's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The command.
    pub command: Command,
    /// DST.ADDR and DST.PORT.
    pub destination: Destination,
}

/// Where a CONNECT request goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// ATYP 1.
    Ipv4(Ipv4Addr, u16),
    /// ATYP 4.
    Ipv6(Ipv6Addr, u16),
    /// ATYP 3: a name, resolved by the agent on its node.
    Domain(String, u16),
}

impl Destination {
    /// The dial address sent in the DIAL_REQ: `1.2.3.4:80`, `[::1]:80`, `name:80`.
    pub fn dial_address(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ipv4(ip, port) => write!(f, "{ip}:{port}"),
            Self::Ipv6(ip, port) => write!(f, "[{ip}]:{port}"),
            Self::Domain(name, port) => write!(f, "{name}:{port}"),
        }
    }
}

impl Destination {
    /// The destination of a dial address (`host:port`, `[v6]:port`): an IP literal
    /// becomes ATYP 1 or 4, anything else a name for the proxy to resolve. `None` when
    /// there is no port, or the name does not fit in a request.
    pub fn from_address(address: &str) -> Option<Self> {
        let (host, port) = address.rsplit_once(':')?;
        let port: u16 = port.parse().ok()?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Some(match host.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(ip)) => Self::Ipv4(ip, port),
            Ok(std::net::IpAddr::V6(ip)) => Self::Ipv6(ip, port),
            Err(_) => {
                if host.is_empty() || host.len() > 255 {
                    return None;
                }
                Self::Domain(host.to_owned(), port)
            }
        })
    }

    /// The client's CONNECT request for this destination.
    pub fn connect_request(&self) -> Vec<u8> {
        let mut r = vec![VERSION, cmd::CONNECT, 0];
        self.encode_into(&mut r);
        r
    }

    /// The port (DST.PORT).
    pub fn port(&self) -> u16 {
        match self {
            Self::Ipv4(_, p) | Self::Ipv6(_, p) | Self::Domain(_, p) => *p,
        }
    }

    /// The IP address, when it is one (not a name).
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Self::Ipv4(ip, _) => Some(IpAddr::V4(*ip)),
            Self::Ipv6(ip, _) => Some(IpAddr::V6(*ip)),
            Self::Domain(..) => None,
        }
    }

    /// Appends `ATYP ADDR PORT`.
    fn encode_into(&self, r: &mut Vec<u8>) {
        let port = match self {
            Self::Ipv4(ip, port) => {
                r.push(atyp::IPV4);
                r.extend_from_slice(&ip.octets());
                port
            }
            Self::Ipv6(ip, port) => {
                r.push(atyp::IPV6);
                r.extend_from_slice(&ip.octets());
                port
            }
            Self::Domain(name, port) => {
                r.push(atyp::DOMAIN);
                r.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
                r.extend_from_slice(&name.as_bytes()[..name.len().min(255)]);
                port
            }
        };
        r.extend_from_slice(&port.to_be_bytes());
    }
}

impl From<SocketAddr> for Destination {
    fn from(a: SocketAddr) -> Self {
        match a.ip() {
            IpAddr::V4(ip) => Self::Ipv4(ip, a.port()),
            IpAddr::V6(ip) => Self::Ipv6(ip, a.port()),
        }
    }
}

/// Parses a server's reply (`VER REP RSV ATYP BND.ADDR BND.PORT`, any address type):
/// the reply code.
pub fn parse_reply(buf: &[u8]) -> Parsed<u8> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    if head[0] != VERSION {
        return Err(SocksError::Version(head[0]));
    }
    let addr_len = match head[3] {
        atyp::IPV4 => 4,
        atyp::IPV6 => 16,
        atyp::DOMAIN => match buf.get(4) {
            None => return Ok(None),
            Some(&n) => 1 + usize::from(n),
        },
        other => return Err(SocksError::AddressType(other)),
    };
    let end = 4 + addr_len + 2;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((head[1], end)))
}

/// What a reply code means (RFC 1928 §6).
pub fn reply_text(code: u8) -> &'static str {
    match code {
        0x00 => "succeeded",
        0x01 => "general SOCKS server failure",
        0x02 => "connection not allowed by ruleset",
        0x03 => "network unreachable",
        0x04 => "host unreachable",
        0x05 => "connection refused",
        0x06 => "TTL expired",
        0x07 => "command not supported",
        0x08 => "address type not supported",
        _ => "unassigned reply code",
    }
}

/// A reply code (RFC 1928 §6, `REP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    /// 0x00.
    Succeeded = 0x00,
    /// 0x01.
    GeneralFailure = 0x01,
    /// 0x02: a policy of the server refused the destination.
    NotAllowed = 0x02,
    /// 0x03.
    NetworkUnreachable = 0x03,
    /// 0x04.
    HostUnreachable = 0x04,
    /// 0x05.
    ConnectionRefused = 0x05,
    /// 0x07.
    CommandNotSupported = 0x07,
    /// 0x08.
    AddressTypeNotSupported = 0x08,
}

impl Reply {
    /// The reply message, with BND.ADDR 0.0.0.0:0: the frontend does not know the
    /// agent's local address (RFC 1928 lets the server choose what to report).
    pub const fn encode(self) -> [u8; 10] {
        [VERSION, self as u8, 0, atyp::IPV4, 0, 0, 0, 0, 0, 0]
    }

    /// The reply message with a bound address: UDP ASSOCIATE's answer names the relay
    /// socket the client sends its datagrams to.
    pub fn encode_bound(self, bound: SocketAddr) -> Vec<u8> {
        let mut r = vec![VERSION, self as u8, 0];
        Destination::from(bound).encode_into(&mut r);
        r
    }
}

/// Malformed or unsupported client input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SocksError {
    /// The first byte is not 5 (another SOCKS version, or another protocol).
    #[error("not SOCKS5 (version byte {0:#04x})")]
    Version(u8),
    /// A greeting offering no methods.
    #[error("the greeting offers no authentication method")]
    NoMethods,
    /// RSV is not 0.
    #[error("reserved byte is {0:#04x}, not 0")]
    Reserved(u8),
    /// BIND (2) or an unknown command.
    #[error("command {0:#04x} is not supported (only CONNECT and UDP ASSOCIATE)")]
    Command(u8),
    /// An unknown ATYP.
    #[error("address type {0:#04x} is not supported")]
    AddressType(u8),
    /// A domain name that is empty, not ASCII, or holds characters no host name has.
    #[error("invalid domain name")]
    Domain,
    /// An RFC 1929 request whose version byte is not 1.
    #[error("username/password version {0:#04x}, not 1")]
    AuthVersion(u8),
    /// An RFC 1929 request with an empty user name.
    #[error("empty user name")]
    NoUser,
    /// A UDP datagram shorter than its header.
    #[error("datagram shorter than its SOCKS5 UDP header")]
    Truncated,
    /// A UDP datagram with FRAG != 0: fragmentation is not supported (§7 lets a
    /// server that does not reassemble drop it).
    #[error("fragment {0:#04x} of a fragmented datagram (fragmentation not supported)")]
    Fragmented(u8),
}

impl SocksError {
    /// The reply the client gets before the connection is closed; `None` when it did
    /// not speak SOCKS5 (it gets no SOCKS5 message, only the close).
    pub fn reply(&self) -> Option<Reply> {
        match self {
            Self::Version(_) | Self::NoMethods | Self::AuthVersion(_) | Self::NoUser => None,
            Self::Reserved(_) | Self::Domain | Self::Truncated | Self::Fragmented(_) => {
                Some(Reply::GeneralFailure)
            }
            Self::Command(_) => Some(Reply::CommandNotSupported),
            Self::AddressType(_) => Some(Reply::AddressTypeNotSupported),
        }
    }
}

/// What an incremental parser returns: `Ok(None)` until the message is complete, then
/// the message and the number of bytes it used.
pub type Parsed<T> = Result<Option<(T, usize)>, SocksError>;

/// The two bytes that start a greeting or a username/password request: the version,
/// which must be `version` (else `wrong(ver)`), then a count that must not be 0 (else
/// `empty`). `None` until both have come.
fn version_and_count(
    buf: &[u8],
    version: u8,
    wrong: fn(u8) -> SocksError,
    empty: SocksError,
) -> Result<Option<u8>, SocksError> {
    match (buf.first(), buf.get(1)) {
        (None, _) => Ok(None),
        (Some(&ver), _) if ver != version => Err(wrong(ver)),
        (_, Some(0)) => Err(empty),
        (_, count) => Ok(count.copied()),
    }
}

/// Parses the method greeting: `VER NMETHODS METHODS...`.
pub fn parse_greeting(buf: &[u8]) -> Parsed<Greeting> {
    let head = version_and_count(buf, VERSION, SocksError::Version, SocksError::NoMethods);
    let Some(n) = head? else {
        return Ok(None);
    };
    let end = 2 + usize::from(n);
    let Some(methods) = buf.get(2..end) else {
        return Ok(None);
    };
    Ok(Some((
        Greeting {
            methods: methods.to_vec(),
        },
        end,
    )))
}

/// Parses a request: `VER CMD RSV ATYP DST.ADDR DST.PORT`; CONNECT and UDP ASSOCIATE
/// are accepted. An unsupported command or address type is reported as soon as its
/// byte arrives.
pub fn parse_request(buf: &[u8]) -> Parsed<Request> {
    let Some(head) = buf.get(..4) else {
        if let Some(&ver) = buf.first()
            && ver != VERSION
        {
            return Err(SocksError::Version(ver));
        }
        return Ok(None);
    };
    let (ver, cmd, rsv, atyp) = (head[0], head[1], head[2], head[3]);
    if ver != VERSION {
        return Err(SocksError::Version(ver));
    }
    let command = match cmd {
        cmd::CONNECT => Command::Connect,
        cmd::UDP_ASSOCIATE => Command::UdpAssociate,
        other => return Err(SocksError::Command(other)),
    };
    if rsv != 0 {
        return Err(SocksError::Reserved(rsv));
    }
    Ok(parse_address(atyp, &buf[4..])?.map(|(destination, n)| {
        (
            Request {
                command,
                destination,
            },
            4 + n,
        )
    }))
}

/// Parses `DST.ADDR DST.PORT` of address type `atyp` from `rest`: the destination and
/// the bytes it used, `Ok(None)` while incomplete.
fn parse_address(atyp: u8, rest: &[u8]) -> Parsed<Destination> {
    let (addr_len, skip) = match atyp {
        atyp::IPV4 => (4, 0),
        atyp::IPV6 => (16, 0),
        atyp::DOMAIN => match rest.first() {
            None => return Ok(None),
            Some(0) => return Err(SocksError::Domain),
            Some(&n) => (usize::from(n), 1),
        },
        other => return Err(SocksError::AddressType(other)),
    };
    let end = skip + addr_len + 2;
    let Some(body) = rest.get(..end) else {
        return Ok(None);
    };
    let addr = &body[skip..skip + addr_len];
    let port = u16::from_be_bytes([body[end - 2], body[end - 1]]);
    let dest = match atyp {
        atyp::IPV4 => {
            let o: [u8; 4] = addr.try_into().map_err(|_| SocksError::AddressType(atyp))?;
            Destination::Ipv4(Ipv4Addr::from(o), port)
        }
        atyp::IPV6 => {
            let o: [u8; 16] = addr.try_into().map_err(|_| SocksError::AddressType(atyp))?;
            Destination::Ipv6(Ipv6Addr::from(o), port)
        }
        _ => Destination::Domain(domain(addr)?, port),
    };
    Ok(Some((dest, end)))
}

/// Parses the header of a UDP ASSOCIATE datagram (RFC 1928 §7: `RSV(2) FRAG ATYP
/// DST.ADDR DST.PORT DATA`), given the whole datagram: where it goes and the header's
/// length (the payload follows it). A datagram is never incomplete, so a short one is
/// [`SocksError::Truncated`]; FRAG != 0 is [`SocksError::Fragmented`].
pub fn parse_udp_header(datagram: &[u8]) -> Result<(Destination, usize), SocksError> {
    let Some(head) = datagram.get(..4) else {
        return Err(SocksError::Truncated);
    };
    if head[0] != 0 || head[1] != 0 {
        return Err(SocksError::Reserved(head[0] | head[1]));
    }
    if head[2] != 0 {
        return Err(SocksError::Fragmented(head[2]));
    }
    match parse_address(head[3], &datagram[4..])? {
        Some((dest, n)) => Ok((dest, 4 + n)),
        None => Err(SocksError::Truncated),
    }
}

/// The header of a UDP ASSOCIATE datagram to or from `dest` (FRAG 0), to put before
/// its payload.
pub fn udp_header(dest: &Destination) -> Vec<u8> {
    let mut h = Vec::with_capacity(4 + 257 + 2);
    h.extend_from_slice(&[0, 0, 0]);
    dest.encode_into(&mut h);
    h
}

/// A host name as the agent's resolver will see it: ASCII letters, digits, `-`, `_`
/// and `.` only (no `:`, which would change where the dial address's port starts,
/// no spaces or control characters).
fn domain(raw: &[u8]) -> Result<String, SocksError> {
    let ok = raw
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        return Err(SocksError::Domain);
    }
    String::from_utf8(raw.to_vec()).map_err(|_| SocksError::Domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_offering_no_auth_is_answered_with_method_zero() {
        let (g, n) = parse_greeting(&[5, 2, 2, 0, 0xAA]).unwrap().unwrap();
        assert_eq!(n, 4, "a pipelined byte is left for the request");
        assert_eq!(g.choose(), NO_AUTH);
        let (g, _) = parse_greeting(&[5, 1, 2]).unwrap().unwrap();
        assert_eq!(g.choose(), NO_ACCEPTABLE_METHOD);
    }

    #[test]
    fn partial_greetings_ask_for_more() {
        for partial in [&[][..], &[5], &[5, 3, 0, 1]] {
            assert_eq!(parse_greeting(partial), Ok(None), "{partial:?}");
        }
    }

    #[test]
    fn malformed_greetings_are_typed_errors_without_a_reply() {
        assert_eq!(parse_greeting(&[4, 1, 0]), Err(SocksError::Version(4)));
        assert_eq!(
            parse_greeting(b"GET / HTTP/1.1"),
            Err(SocksError::Version(b'G'))
        );
        assert_eq!(parse_greeting(&[5, 0]), Err(SocksError::NoMethods));
        assert_eq!(SocksError::Version(4).reply(), None);
        assert_eq!(SocksError::NoMethods.reply(), None);
    }

    #[test]
    fn connect_requests_parse_to_dial_addresses() {
        let v4 = [5, 1, 0, 1, 10, 0, 0, 7, 0x28, 0x0A];
        let (r, n) = parse_request(&v4).unwrap().unwrap();
        assert_eq!(r.command, Command::Connect);
        let d = r.destination;
        assert_eq!((d.dial_address(), n), ("10.0.0.7:10250".to_owned(), 10));

        let mut v6 = vec![5, 1, 0, 4];
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&[0, 80, 0xFF]);
        let (r, n) = parse_request(&v6).unwrap().unwrap();
        assert_eq!(
            (r.destination.dial_address(), n),
            ("[::1]:80".to_owned(), 22)
        );

        let mut name = vec![5, 1, 0, 3, 11];
        name.extend_from_slice(b"node.local_");
        name.extend_from_slice(&[0x1F, 0x90]);
        let (r, n) = parse_request(&name).unwrap().unwrap();
        let d = r.destination;
        assert_eq!(d, Destination::Domain("node.local_".into(), 8080));
        assert_eq!((d.dial_address(), n), ("node.local_:8080".to_owned(), 18));
    }

    #[test]
    fn partial_requests_ask_for_more() {
        let full = [5, 1, 0, 3, 4, b'h', b'o', b's', b't', 0, 80];
        for cut in 0..full.len() {
            assert_eq!(parse_request(&full[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(parse_request(&full).unwrap().is_some());
    }

    #[test]
    fn unsupported_commands_and_address_types_get_their_reply_codes() {
        for cmd in [2, 0, 9] {
            let e = parse_request(&[5, cmd, 0, 1]).unwrap_err();
            assert_eq!(e, SocksError::Command(cmd));
            assert_eq!(e.reply(), Some(Reply::CommandNotSupported));
        }
        let e = parse_request(&[5, 1, 0, 2]).unwrap_err();
        assert_eq!(e, SocksError::AddressType(2));
        assert_eq!(e.reply(), Some(Reply::AddressTypeNotSupported));
        assert_eq!(parse_request(&[5, 1, 1, 1]), Err(SocksError::Reserved(1)));
        assert_eq!(parse_request(&[4]), Err(SocksError::Version(4)));
    }

    #[test]
    fn domains_that_would_change_the_dial_address_are_refused() {
        for bad in [
            &b""[..],
            b"a:1",
            b"a b",
            b"a\nb",
            b"a/b",
            "é".as_bytes(),
            b"[::1]",
        ] {
            let mut req = vec![5, 1, 0, 3, bad.len() as u8];
            req.extend_from_slice(bad);
            req.extend_from_slice(&[0, 80]);
            assert_eq!(parse_request(&req), Err(SocksError::Domain), "{bad:?}");
        }
        assert_eq!(SocksError::Domain.reply(), Some(Reply::GeneralFailure));
    }

    #[test]
    fn client_requests_round_trip_through_the_server_parser() {
        for a in ["10.0.0.7:10250", "[::1]:80", "node-1.internal:8080"] {
            let d = Destination::from_address(a).unwrap();
            let (back, n) = parse_request(&d.connect_request()).unwrap().unwrap();
            assert_eq!(
                (back.destination.dial_address(), n),
                (a.to_owned(), d.connect_request().len())
            );
        }
        assert_eq!(Destination::from_address("no-port"), None);
        assert_eq!(Destination::from_address(":80"), None);
    }

    #[test]
    fn replies_parse_with_any_bound_address_type() {
        assert_eq!(
            parse_reply(&Reply::ConnectionRefused.encode()),
            Ok(Some((5, 10)))
        );
        assert_eq!(
            parse_reply(&[5, 0, 0, 3, 1, b'x', 0, 1, 9]),
            Ok(Some((0, 8)))
        );
        assert_eq!(parse_reply(&[5, 0, 0, 4, 0]), Ok(None));
        assert_eq!(parse_reply(&[4, 0, 0, 1]), Err(SocksError::Version(4)));
        assert_eq!(reply_text(4), "host unreachable");
    }

    #[test]
    fn replies_are_ten_bytes_with_an_unspecified_bound_address() {
        assert_eq!(Reply::Succeeded.encode(), [5, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Reply::ConnectionRefused.encode()[1], 5);
        assert_eq!(Reply::AddressTypeNotSupported.encode()[1], 8);
    }

    #[test]
    fn udp_associate_requests_parse_with_the_clients_address() {
        let (r, n) = parse_request(&[5, 3, 0, 1, 0, 0, 0, 0, 0x30, 0x39])
            .unwrap()
            .unwrap();
        assert_eq!(r.command, Command::UdpAssociate);
        assert_eq!(
            r.destination,
            Destination::Ipv4(Ipv4Addr::UNSPECIFIED, 12345)
        );
        assert_eq!(n, 10);
        // PySocks sends the name "0" and its port.
        let (r, _) = parse_request(&[5, 3, 0, 3, 1, b'0', 0, 7])
            .unwrap()
            .unwrap();
        assert_eq!((r.destination.ip(), r.destination.port()), (None, 7));
    }

    #[test]
    fn udp_headers_round_trip_for_every_address_type() {
        for a in ["10.0.0.7:53", "[::1]:5353", "dns.node-only.test:53"] {
            let d = Destination::from_address(a).unwrap();
            let mut datagram = udp_header(&d);
            let header = datagram.len();
            datagram.extend_from_slice(b"payload");
            let (back, n) = parse_udp_header(&datagram).unwrap();
            assert_eq!((back, n), (d, header));
            assert_eq!(&datagram[n..], b"payload");
        }
        // An empty payload is a valid (empty) datagram.
        assert!(parse_udp_header(&[0, 0, 0, 1, 1, 2, 3, 4, 0, 53]).is_ok());
    }

    #[test]
    fn malformed_udp_headers_are_typed_errors() {
        for short in [
            &[][..],
            &[0, 0, 0],
            &[0, 0, 0, 1, 10, 0, 0],
            &[0, 0, 0, 3, 9, b'a'],
        ] {
            assert_eq!(
                parse_udp_header(short),
                Err(SocksError::Truncated),
                "{short:?}"
            );
        }
        assert_eq!(
            parse_udp_header(&[0, 0, 1, 1, 1, 2, 3, 4, 0, 53]),
            Err(SocksError::Fragmented(1))
        );
        assert_eq!(
            parse_udp_header(&[0, 0, 0, 2, 1, 2, 3, 4, 0, 53]),
            Err(SocksError::AddressType(2))
        );
        assert_eq!(
            parse_udp_header(&[0, 7, 0, 1, 1, 2, 3, 4, 0, 53]),
            Err(SocksError::Reserved(7))
        );
        assert_eq!(
            parse_udp_header(&[0, 0, 0, 3, 3, b'a', b':', b'b', 0, 53]),
            Err(SocksError::Domain)
        );
    }

    #[test]
    fn udp_associate_replies_name_the_relay_socket() {
        let r = Reply::Succeeded.encode_bound("127.0.0.1:4242".parse().unwrap());
        assert_eq!(r, [5, 0, 0, 1, 127, 0, 0, 1, 0x10, 0x92]);
        assert_eq!(parse_reply(&r), Ok(Some((0, 10))));
    }

    #[test]
    fn password_required_chooses_method_two_and_never_method_zero() {
        let (g, _) = parse_greeting(&[5, 2, 0, 2]).unwrap().unwrap();
        assert_eq!(g.choose_with(true), USER_PASS);
        assert_eq!(g.choose_with(false), NO_AUTH);
        let (g, _) = parse_greeting(&[5, 1, 0]).unwrap().unwrap();
        assert_eq!(g.choose_with(true), NO_ACCEPTABLE_METHOD);
    }

    #[test]
    fn user_pass_requests_parse_incrementally() {
        let full = [1, 1, b'u', 2, b'p', b'w', 9];
        for cut in 0..6 {
            assert_eq!(parse_user_pass(&full[..cut]), Ok(None), "cut at {cut}");
        }
        let (c, n) = parse_user_pass(&full).unwrap().unwrap();
        assert_eq!(
            (c.user.as_slice(), c.password.as_slice(), n),
            (&b"u"[..], &b"pw"[..], 6)
        );
        assert!(!format!("{c:?}").contains("pw"), "Debug hides the password");
        assert_eq!(parse_user_pass(&[5, 1]), Err(SocksError::AuthVersion(5)));
        assert_eq!(parse_user_pass(&[1, 0, 0]), Err(SocksError::NoUser));
        assert_eq!(user_pass_reply(true), [1, 0]);
        assert_eq!(user_pass_reply(false), [1, 1]);
    }

    #[test]
    fn a_client_user_pass_request_round_trips_and_refuses_fields_over_255_bytes() {
        let c = UserPass {
            user: b"ops".to_vec(),
            password: b"s3cret:2".to_vec(),
        };
        let wire = c.encode().unwrap();
        let (back, n) = parse_user_pass(&wire).unwrap().unwrap();
        assert_eq!((back, n), (c, wire.len()));
        let long = UserPass {
            user: vec![b'u'; 256],
            password: Vec::new(),
        };
        assert_eq!(long.encode(), None);
        let empty = UserPass {
            user: Vec::new(),
            password: b"x".to_vec(),
        };
        assert_eq!(empty.encode(), None);
    }

    #[test]
    fn users_file_checks_every_user_and_password_exactly() {
        let users = Users::parse("# ops\nalice:s3cret:x\n\nbob:hunter2\r\n").unwrap();
        assert_eq!(users.len(), 2);
        let c = |u: &str, p: &str| UserPass {
            user: u.into(),
            password: p.into(),
        };
        assert!(
            users.check(&c("alice", "s3cret:x")),
            "password after the first colon"
        );
        assert!(users.check(&c("bob", "hunter2")));
        for (u, p) in [
            ("bob", "hunter"),
            ("bob", "hunter22"),
            ("alice", "hunter2"),
            ("", ""),
            ("carol", "s3cret:x"),
        ] {
            assert!(!users.check(&c(u, p)), "{u}:{p}");
        }
        assert!(Users::parse("nocolon").unwrap_err().contains("line 1"));
        assert!(Users::parse("a:").is_err());
        assert!(Users::parse(":p").is_err());
        assert!(Users::parse("# only a comment\n").is_err());
    }
}
