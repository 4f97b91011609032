//! The relay's authentication: the pre-shared key and the challenge-response handshake that runs
//! before any byte may reach the serial port.
//!
//! Nothing here touches a socket or a clock: the relay ([`super`]) and the client transport
//! ([`crate::transport::relay`]) move the lines, this module builds and checks them. Only
//! [`Key::from_file`] and [`Key::from_env`] read the key, and [`fresh_nonce`] asks the operating
//! system for random bytes.
//!
//! # The handshake
//!
//! Every message is one line of printable ASCII ending in `\n`, at most [`MAX_LINE`] bytes, and
//! starts with [`PROTOCOL`] and a space. Nonces and tags are 32 bytes, written as 64 lowercase
//! hex digits. `K` is the key, `Sn` the relay's nonce, `Cn` the client's.
//!
//! | Direction | Line |
//! |---|---|
//! | relay → client | `STM32BOOT-RELAY/1 CHALLENGE <Sn>` (or `BUSY`, or `RETRY-LATER`, then the relay closes) |
//! | client → relay | `STM32BOOT-RELAY/1 RESPONSE <Cn> <HMAC-SHA256(K, "stm32boot-relay/1 client-proof" 00 Sn Cn)>` |
//! | relay → client | `STM32BOOT-RELAY/1 OK <HMAC-SHA256(K, "stm32boot-relay/1 relay-proof" 00 Sn Cn)>` (or `DENIED` / `BUSY`, then the relay closes) |
//!
//! RFC 2217 starts right after the `OK` line, on the same connection. The relay always sends the
//! challenge, also when it dials out (`stm32boot relay --connect`) to a client waiting on
//! `relay-listen://`; the labels then read `dial-out client-proof` and `dial-out relay-proof`
//! ([`Direction`]).
//!
//! Properties:
//! - the relay's nonce is fresh for every connection, so a recorded answer fails on the next one
//!   (replay);
//! - the two tags carry different labels, so neither side's tag can be sent back as the other's
//!   (reflection), and a client that echoes the relay's nonce as its own is refused;
//! - the relay's tag covers the client's fresh nonce, so the client knows that it reached a
//!   relay holding the key, not a recording of one;
//! - the direction is bound into the tags: a client waiting on `relay-listen://` answers the
//!   challenge of whoever connects to it, and what it answers is only valid for a relay that
//!   dials out, which accepts no connections, never for a listening relay. It cannot be used as
//!   an oracle against a relay sharing the key;
//! - tags are compared in constant time (`verify_slice`).
//!
//! The handshake authenticates the two ends; it does not encrypt or protect what follows. On an
//! untrusted network, run the relay behind a VPN or an SSH tunnel as well.

use crate::error::{Error, Result};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::fmt;
use std::path::Path;

/// The environment variable that may hold the key itself (for the relay and its clients).
pub const KEY_ENV: &str = "STM32BOOT_RELAY_KEY";

/// The environment variable that may name the key file (for the relay and its clients).
pub const KEY_FILE_ENV: &str = "STM32BOOT_RELAY_KEY_FILE";

/// The shortest key accepted, in bytes (after trimming whitespace).
pub const MIN_KEY_LEN: usize = 16;

/// The longest key accepted, in bytes: a key file is not a place for anything large.
pub const MAX_KEY_LEN: usize = 4096;

/// Bytes in a nonce.
pub const NONCE_LEN: usize = 32;

/// Bytes in an HMAC-SHA256 tag.
pub const TAG_LEN: usize = 32;

/// The first word of every handshake line: the protocol and its version.
pub const PROTOCOL: &str = "STM32BOOT-RELAY/1";

/// The longest handshake line accepted, `\n` included.
pub const MAX_LINE: usize = 192;

/// Who opened the connection the handshake runs on. It is bound into both tags, so that an
/// answer made for one direction is worthless in the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The client connected to a listening relay (`relay://`).
    ToRelay,
    /// The relay dialled out to a waiting client (`relay --connect`, `relay-listen://`).
    FromRelay,
}

impl Direction {
    /// The labels of the client's and the relay's tags.
    fn labels(self) -> (&'static [u8], &'static [u8]) {
        match self {
            Direction::ToRelay => (
                b"stm32boot-relay/1 client-proof",
                b"stm32boot-relay/1 relay-proof",
            ),
            Direction::FromRelay => (
                b"stm32boot-relay/1 dial-out client-proof",
                b"stm32boot-relay/1 dial-out relay-proof",
            ),
        }
    }
}

/// A nonce: 32 random bytes.
pub type Nonce = [u8; NONCE_LEN];

/// An HMAC-SHA256 tag.
pub type Tag = [u8; TAG_LEN];

/// The pre-shared key. Neither `Debug` nor `Display` shows it, and its bytes are overwritten
/// when it is dropped.
#[derive(Clone)]
pub struct Key {
    bytes: Vec<u8>,
    source: String,
}

impl Key {
    /// A key from raw bytes; surrounding ASCII whitespace is trimmed. `source` says where it
    /// came from, for messages ("the file /etc/relay.key"). Fails if what is left is shorter
    /// than [`MIN_KEY_LEN`] or longer than [`MAX_KEY_LEN`] bytes.
    pub fn from_bytes(raw: &[u8], source: impl Into<String>) -> Result<Key> {
        let source = source.into();
        let bytes = raw.trim_ascii();
        if bytes.is_empty() {
            return Err(Error::InvalidRequest(format!(
                "the relay key from {source} is empty; create one with `openssl rand -hex 32`"
            )));
        }
        if bytes.len() < MIN_KEY_LEN {
            return Err(Error::InvalidRequest(format!(
                "the relay key from {source} is {} bytes long; use at least {MIN_KEY_LEN} (for \
                 example 64 hex digits from `openssl rand -hex 32`)",
                bytes.len()
            )));
        }
        if bytes.len() > MAX_KEY_LEN {
            return Err(Error::InvalidRequest(format!(
                "the relay key from {source} is {} bytes long; at most {MAX_KEY_LEN} are accepted \
                 (is it the right file?)",
                bytes.len()
            )));
        }
        Ok(Key {
            bytes: bytes.to_vec(),
            source,
        })
    }

    /// Read the key from `path` (its content, trimmed). Logs a warning if other users may read
    /// the file.
    pub fn from_file(path: &Path) -> Result<Key> {
        let shown = path.display();
        // A key file that cannot be read is bad input (exit code 2), like a missing image.
        let meta = std::fs::metadata(path).map_err(|e| {
            Error::InvalidRequest(format!(
                "reading the relay key file {shown} (check the path given with --key-file, \
                 ?key_file= or {KEY_FILE_ENV}): {e}"
            ))
        })?;
        if !meta.is_file() {
            return Err(Error::InvalidRequest(format!(
                "the relay key file {shown} is not a regular file"
            )));
        }
        if meta.len() > 64 * 1024 {
            return Err(Error::InvalidRequest(format!(
                "the relay key file {shown} is {} bytes long: is it the right file?",
                meta.len()
            )));
        }
        warn_if_shared(path, &meta);
        let raw = std::fs::read(path).map_err(|e| {
            Error::InvalidRequest(format!("reading the relay key file {shown}: {e}"))
        })?;
        Key::from_bytes(&raw, format!("the file {shown}"))
    }

    /// The key in [`KEY_ENV`], if that variable is set.
    pub fn from_env() -> Result<Option<Key>> {
        match std::env::var_os(KEY_ENV) {
            None => Ok(None),
            Some(value) => {
                Key::from_bytes(value.as_encoded_bytes(), format!("${KEY_ENV}")).map(Some)
            }
        }
    }

    /// Where the key came from ("the file /etc/relay.key", "$STM32BOOT_RELAY_KEY").
    pub fn source(&self) -> &str {
        &self.source
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length: this cannot fail.
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.bytes)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"))
    }

    fn tagged(&self, label: &[u8], relay_nonce: &Nonce, client_nonce: &Nonce) -> Hmac<Sha256> {
        let mut mac = self.mac();
        mac.update(label);
        mac.update(&[0]);
        mac.update(relay_nonce);
        mac.update(client_nonce);
        mac
    }

    /// The client's tag: HMAC-SHA256(key, `"stm32boot-relay/1 client-proof" 00 Sn Cn`), with
    /// `dial-out client-proof` for [`Direction::FromRelay`].
    pub fn client_tag(&self, dir: Direction, relay_nonce: &Nonce, client_nonce: &Nonce) -> Tag {
        self.tagged(dir.labels().0, relay_nonce, client_nonce)
            .finalize()
            .into_bytes()
            .into()
    }

    /// The relay's tag: HMAC-SHA256(key, `"stm32boot-relay/1 relay-proof" 00 Sn Cn`), with
    /// `dial-out relay-proof` for [`Direction::FromRelay`].
    pub fn relay_tag(&self, dir: Direction, relay_nonce: &Nonce, client_nonce: &Nonce) -> Tag {
        self.tagged(dir.labels().1, relay_nonce, client_nonce)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Whether `tag` is the client's tag for these nonces (constant time).
    pub fn verify_client(
        &self,
        dir: Direction,
        relay_nonce: &Nonce,
        client_nonce: &Nonce,
        tag: &[u8],
    ) -> bool {
        self.tagged(dir.labels().0, relay_nonce, client_nonce)
            .verify_slice(tag)
            .is_ok()
    }

    /// Whether `tag` is the relay's tag for these nonces (constant time).
    pub fn verify_relay(
        &self,
        dir: Direction,
        relay_nonce: &Nonce,
        client_nonce: &Nonce,
        tag: &[u8],
    ) -> bool {
        self.tagged(dir.labels().1, relay_nonce, client_nonce)
            .verify_slice(tag)
            .is_ok()
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("source", &self.source)
            .field("len", &self.bytes.len())
            .field("bytes", &"<redacted>")
            .finish()
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the relay key from {} (redacted)", self.source)
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        // Best effort: the allocator may have copied the bytes before.
        for b in self.bytes.iter_mut() {
            // `black_box` keeps the stores from being optimised away.
            *b = std::hint::black_box(0);
        }
    }
}

#[cfg(unix)]
fn warn_if_shared(path: &Path, meta: &std::fs::Metadata) {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            "the relay key file {} can be read by other users (mode {mode:03o}); restrict it \
             with `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
}

#[cfg(not(unix))]
fn warn_if_shared(_path: &Path, _meta: &std::fs::Metadata) {}

/// A fresh random nonce from the operating system.
pub fn fresh_nonce() -> Result<Nonce> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| {
        Error::io(
            "getting random bytes for the relay handshake",
            std::io::Error::other(e.to_string()),
        )
    })?;
    Ok(nonce)
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0F)]));
    }
    s
}

/// Exactly 32 bytes from 64 hex digits (either case).
fn unhex32(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

/// What the relay sends: its greeting, and its verdict on the client's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayLine {
    /// The greeting: prove that you hold the key, over this nonce.
    Challenge(Nonce),
    /// Another client is being served; the relay closes.
    Busy,
    /// This peer (or too many peers) failed recently; the relay closes without a challenge.
    RetryLater,
    /// The answer was right; this is the relay's own tag. RFC 2217 follows.
    Ok(Tag),
    /// The answer was wrong; the relay closes.
    Denied,
}

impl RelayLine {
    /// The line, `\n` included.
    pub fn encode(&self) -> String {
        match self {
            RelayLine::Challenge(n) => format!("{PROTOCOL} CHALLENGE {}\n", hex(n)),
            RelayLine::Busy => format!("{PROTOCOL} BUSY\n"),
            RelayLine::RetryLater => format!("{PROTOCOL} RETRY-LATER\n"),
            RelayLine::Ok(t) => format!("{PROTOCOL} OK {}\n", hex(t)),
            RelayLine::Denied => format!("{PROTOCOL} DENIED\n"),
        }
    }

    /// Parse a line as [`LineReader`] returns it (without the line end).
    pub fn parse(line: &str) -> std::result::Result<RelayLine, String> {
        let words = body(line)?;
        match words.as_slice() {
            ["CHALLENGE", n] => unhex32(n)
                .map(RelayLine::Challenge)
                .ok_or_else(|| "a challenge that is not 64 hex digits".to_string()),
            ["BUSY"] => Ok(RelayLine::Busy),
            ["RETRY-LATER"] => Ok(RelayLine::RetryLater),
            ["OK", t] => unhex32(t)
                .map(RelayLine::Ok)
                .ok_or_else(|| "a proof that is not 64 hex digits".to_string()),
            ["DENIED"] => Ok(RelayLine::Denied),
            _ => Err(format!("an unknown relay message ({} words)", words.len())),
        }
    }
}

/// The client's answer to a challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The client's fresh nonce.
    pub client_nonce: Nonce,
    /// [`Key::client_tag`] over the relay's and the client's nonces.
    pub tag: Tag,
}

impl Response {
    /// The answer to `relay_nonce` with `client_nonce` (use [`fresh_nonce`]).
    pub fn new(key: &Key, dir: Direction, relay_nonce: &Nonce, client_nonce: Nonce) -> Response {
        Response {
            tag: key.client_tag(dir, relay_nonce, &client_nonce),
            client_nonce,
        }
    }

    /// The line, `\n` included.
    pub fn encode(&self) -> String {
        format!(
            "{PROTOCOL} RESPONSE {} {}\n",
            hex(&self.client_nonce),
            hex(&self.tag)
        )
    }

    /// Parse a line as [`LineReader`] returns it.
    pub fn parse(line: &str) -> std::result::Result<Response, String> {
        let words = body(line)?;
        match words.as_slice() {
            ["RESPONSE", n, t] => {
                let client_nonce =
                    unhex32(n).ok_or_else(|| "a nonce that is not 64 hex digits".to_string())?;
                let tag =
                    unhex32(t).ok_or_else(|| "a proof that is not 64 hex digits".to_string())?;
                Ok(Response { client_nonce, tag })
            }
            _ => Err("not a challenge response".to_string()),
        }
    }
}

/// The words after the protocol name.
fn body(line: &str) -> std::result::Result<Vec<&str>, String> {
    let rest = line
        .strip_prefix(PROTOCOL)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| "not a stm32boot relay handshake line".to_string())?;
    Ok(rest.split(' ').collect())
}

/// Why the relay refused a client's answer. Carries nothing secret: it may be logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// The answer was not a well-formed response line.
    #[error("malformed answer: {0}")]
    Malformed(String),
    /// The client sent the relay's nonce back as its own.
    #[error("the client reflected the relay's nonce")]
    Reflected,
    /// The tag did not match: the client does not hold the key, or replayed an old answer.
    #[error("wrong proof (the client does not hold the key, or replayed an old answer)")]
    WrongProof,
}

/// The relay's side of one handshake: a fresh challenge, and the check of the answer.
#[derive(Debug, Clone)]
pub struct Challenge {
    nonce: Nonce,
    dir: Direction,
}

impl Challenge {
    /// A challenge over `nonce` (use [`Challenge::fresh`] outside tests).
    pub fn new(nonce: Nonce, dir: Direction) -> Challenge {
        Challenge { nonce, dir }
    }

    /// A challenge over a fresh random nonce.
    pub fn fresh(dir: Direction) -> Result<Challenge> {
        Ok(Challenge::new(fresh_nonce()?, dir))
    }

    /// The relay's nonce.
    pub fn nonce(&self) -> &Nonce {
        &self.nonce
    }

    /// The greeting line.
    pub fn line(&self) -> String {
        RelayLine::Challenge(self.nonce).encode()
    }

    /// Check the client's answer (a line as [`LineReader`] returns it); on success, the `OK`
    /// line with the relay's tag.
    pub fn check(&self, key: &Key, answer: &str) -> std::result::Result<String, AuthFailure> {
        let response = Response::parse(answer).map_err(AuthFailure::Malformed)?;
        if response.client_nonce == self.nonce {
            return Err(AuthFailure::Reflected);
        }
        if !key.verify_client(self.dir, &self.nonce, &response.client_nonce, &response.tag) {
            return Err(AuthFailure::WrongProof);
        }
        Ok(RelayLine::Ok(key.relay_tag(self.dir, &self.nonce, &response.client_nonce)).encode())
    }
}

/// Why a handshake line could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// A byte that no handshake line contains (binary data, Telnet negotiation, AN3155).
    #[error("byte 0x{0:02X}, which no handshake line contains")]
    NotText(u8),
    /// Text, but not this protocol.
    #[error("text that is not the stm32boot relay protocol")]
    WrongProtocol,
    /// No line end within [`MAX_LINE`] bytes.
    #[error("a line longer than {MAX_LINE} bytes")]
    TooLong,
}

/// Assembles one handshake line from bytes as they arrive, and rejects anything that cannot
/// become one at the first wrong byte, so that garbage is refused at once rather than at the
/// handshake deadline.
#[derive(Debug, Default)]
pub struct LineReader {
    buf: Vec<u8>,
}

impl LineReader {
    /// An empty reader.
    pub fn new() -> LineReader {
        LineReader::default()
    }

    /// Bytes taken so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether no byte has been taken yet.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Take one byte; the complete line (without `\r\n` or `\n`) once `\n` arrives.
    pub fn push(&mut self, byte: u8) -> std::result::Result<Option<String>, LineError> {
        if byte == b'\n' {
            let mut line = std::mem::take(&mut self.buf);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.len() <= PROTOCOL.len() {
                return Err(LineError::WrongProtocol);
            }
            // Only printable ASCII got in, so this cannot fail.
            return String::from_utf8(line)
                .map(Some)
                .map_err(|_| LineError::NotText(0));
        }
        if self.buf.len() + 1 >= MAX_LINE {
            return Err(LineError::TooLong);
        }
        let printable = (0x20..=0x7E).contains(&byte) || byte == b'\r';
        if !printable {
            return Err(LineError::NotText(byte));
        }
        if self.buf.last() == Some(&b'\r') {
            return Err(LineError::NotText(b'\r'));
        }
        let expected = PROTOCOL.as_bytes().iter().chain(b" ");
        if let Some(&want) = expected.clone().nth(self.buf.len()) {
            if byte != want {
                return Err(LineError::WrongProtocol);
            }
        }
        self.buf.push(byte);
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Direction::{FromRelay, ToRelay};

    fn key() -> Key {
        Key::from_bytes(b"0123456789abcdef0123456789abcdef\n", "a test").expect("test setup")
    }

    fn read_line(bytes: &[u8]) -> std::result::Result<Option<String>, LineError> {
        let mut r = LineReader::new();
        for &b in bytes {
            if let Some(line) = r.push(b)? {
                return Ok(Some(line));
            }
        }
        Ok(None)
    }

    #[test]
    fn hmac_sha256_known_answer() {
        // RFC 4231 test case 2, through the same HMAC the handshake uses.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"Jefe").expect("test setup");
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn handshake_tags_known_answer() {
        // Computed independently (Python's hmac module) over the documented messages.
        let k = key();
        let sn = [0x11u8; 32];
        let cn = [0x22u8; 32];
        assert_eq!(
            hex(&k.client_tag(ToRelay, &sn, &cn)),
            "8164c47b7c6ac9daeffea0553982007b2755f9e926c4086f1a28a1a90f4656b6"
        );
        assert_eq!(
            hex(&k.relay_tag(ToRelay, &sn, &cn)),
            "30a76ad4eed8d41e17624956016a56f9cb3fbdde556c051d42a520ecfdb0c4b1"
        );
        assert_eq!(
            hex(&k.client_tag(FromRelay, &sn, &cn)),
            "059c9ec05967fc2c7f12a5afdae7cdc48a8fba98f172e045abf32cec7d426a7b"
        );
        assert_eq!(
            hex(&k.relay_tag(FromRelay, &sn, &cn)),
            "167f93cb6e564295381ffd3ef88d5d34d7f82d797c5cb5c8bc5f25fad14e6266"
        );
    }

    #[test]
    fn an_answer_for_one_direction_fails_in_the_other() {
        let k = key();
        // What a client waiting on relay-listen:// answers to whoever connects to it...
        let oracle = Response::new(&k, FromRelay, &[4; 32], [5; 32]);
        // ...does not open a listening relay that sent the same challenge.
        assert_eq!(
            Challenge::new([4; 32], ToRelay).check(&k, oracle.encode().trim_end()),
            Err(AuthFailure::WrongProof)
        );
        assert!(Challenge::new([4; 32], FromRelay)
            .check(&k, oracle.encode().trim_end())
            .is_ok());
        let tag = k.relay_tag(ToRelay, &[4; 32], &[5; 32]);
        assert!(!k.verify_relay(FromRelay, &[4; 32], &[5; 32], &tag));
    }

    #[test]
    fn the_right_answer_passes_and_proves_the_relay() {
        let k = key();
        let challenge = Challenge::new([7; 32], ToRelay);
        let greeting = read_line(challenge.line().as_bytes())
            .expect("test setup")
            .expect("test setup");
        let RelayLine::Challenge(sn) = RelayLine::parse(&greeting).expect("test setup") else {
            panic!("not a challenge: {greeting}");
        };
        let answer = Response::new(&k, ToRelay, &sn, [9; 32]);
        let ok = challenge
            .check(&k, answer.encode().trim_end())
            .expect("the right answer passes");
        let RelayLine::Ok(tag) = RelayLine::parse(ok.trim_end()).expect("test setup") else {
            panic!("not OK: {ok}");
        };
        assert!(k.verify_relay(ToRelay, &sn, &[9; 32], &tag));
        // The client checks the relay's tag against its own nonce: another one fails.
        assert!(!k.verify_relay(ToRelay, &sn, &[8; 32], &tag));
    }

    #[test]
    fn wrong_key_tampered_replayed_and_reflected_answers_fail() {
        let k = key();
        let other =
            Key::from_bytes(b"another key, 16 bytes or more", "a test").expect("test setup");
        let challenge = Challenge::new([1; 32], ToRelay);
        let wrong = Response::new(&other, ToRelay, &[1; 32], [2; 32]).encode();
        assert_eq!(
            challenge.check(&k, wrong.trim_end()),
            Err(AuthFailure::WrongProof)
        );
        let mut tampered = Response::new(&k, ToRelay, &[1; 32], [2; 32]);
        tampered.tag[31] ^= 1;
        assert_eq!(
            challenge.check(&k, tampered.encode().trim_end()),
            Err(AuthFailure::WrongProof)
        );
        // A good answer to one challenge fails on the next.
        let recorded = Response::new(&k, ToRelay, &[1; 32], [2; 32]).encode();
        assert!(challenge.check(&k, recorded.trim_end()).is_ok());
        let next = Challenge::new([3; 32], ToRelay);
        assert_eq!(
            next.check(&k, recorded.trim_end()),
            Err(AuthFailure::WrongProof)
        );
        // The relay's own tag is not a client tag.
        let relay_tag = k.relay_tag(ToRelay, &[1; 32], &[2; 32]);
        let reflected_tag = Response {
            client_nonce: [2; 32],
            tag: relay_tag,
        };
        assert_eq!(
            challenge.check(&k, reflected_tag.encode().trim_end()),
            Err(AuthFailure::WrongProof)
        );
        let reflected_nonce = Response::new(&k, ToRelay, &[1; 32], [1; 32]);
        assert_eq!(
            challenge.check(&k, reflected_nonce.encode().trim_end()),
            Err(AuthFailure::Reflected)
        );
    }

    #[test]
    fn wrong_lengths_are_malformed() {
        let k = key();
        let challenge = Challenge::new([1; 32], ToRelay);
        let good = Response::new(&k, ToRelay, &[1; 32], [2; 32]);
        let n = hex(&good.client_nonce);
        let t = hex(&good.tag);
        for bad in [
            format!("{PROTOCOL} RESPONSE {} {t}", &n[..62]),
            format!("{PROTOCOL} RESPONSE {n} {}", &t[..63]),
            format!("{PROTOCOL} RESPONSE {n}00 {t}"),
            format!("{PROTOCOL} RESPONSE {n} {t} extra"),
            format!("{PROTOCOL} RESPONSE {n}"),
            format!("{PROTOCOL} RESPONSE {n} {}zz", &t[..62]),
            format!("{PROTOCOL} OK {t}"),
            "STM32BOOT-RELAY/2 RESPONSE".to_string(),
        ] {
            assert!(
                matches!(challenge.check(&k, &bad), Err(AuthFailure::Malformed(_))),
                "{bad}"
            );
        }
        assert!(!k.verify_client(ToRelay, &[1; 32], &[2; 32], &good.tag[..31]));
        assert!(!k.verify_client(ToRelay, &[1; 32], &[2; 32], &[]));
    }

    #[test]
    fn relay_lines_round_trip() {
        for line in [
            RelayLine::Challenge([0xAB; 32]),
            RelayLine::Busy,
            RelayLine::RetryLater,
            RelayLine::Ok([0x01; 32]),
            RelayLine::Denied,
        ] {
            let text = line.encode();
            assert!(text.len() <= MAX_LINE, "{text}");
            let read = read_line(text.as_bytes())
                .expect("test setup")
                .expect("test setup");
            assert_eq!(RelayLine::parse(&read), Ok(line));
        }
        let response = Response::new(&key(), ToRelay, &[5; 32], [6; 32]);
        assert!(response.encode().len() <= MAX_LINE);
        assert_eq!(
            Response::parse(response.encode().trim_end()),
            Ok(response.clone())
        );
    }

    #[test]
    fn line_reader_rejects_garbage_at_the_first_byte() {
        // AN3155 sync, Telnet negotiation, other text.
        assert_eq!(read_line(&[0x7F]), Err(LineError::NotText(0x7F)));
        assert_eq!(
            read_line(&[0xFF, 0xFB, 0x2C]),
            Err(LineError::NotText(0xFF))
        );
        assert_eq!(
            read_line(b"GET / HTTP/1.1\r\n"),
            Err(LineError::WrongProtocol)
        );
        assert_eq!(
            read_line(b"STM32BOOT-RELAY/1\n"),
            Err(LineError::WrongProtocol)
        );
        assert_eq!(read_line(b"\n"), Err(LineError::WrongProtocol));
        let long = format!("{PROTOCOL} {}", "A".repeat(MAX_LINE));
        assert_eq!(read_line(long.as_bytes()), Err(LineError::TooLong));
        // Incomplete but plausible: keep reading.
        assert_eq!(read_line(b"STM32BOOT-RELAY/1 RESP"), Ok(None));
        // CRLF is accepted; a lone CR inside is not.
        assert_eq!(
            read_line(b"STM32BOOT-RELAY/1 BUSY\r\n"),
            Ok(Some("STM32BOOT-RELAY/1 BUSY".to_string()))
        );
        assert_eq!(
            read_line(b"STM32BOOT-RELAY/1 B\rUSY\n"),
            Err(LineError::NotText(b'\r'))
        );
    }

    #[test]
    fn debug_and_display_hide_the_key() {
        let k = key();
        for text in [format!("{k:?}"), format!("{k}"), format!("{k:#?}")] {
            assert!(!text.contains("0123456789abcdef"), "{text}");
            assert!(!text.contains("30313233"), "{text}");
            assert!(text.contains("redacted"), "{text}");
        }
    }

    #[test]
    fn short_empty_and_huge_keys_are_refused_without_showing_them() {
        let short = Key::from_bytes(b"  tiny-secret \n", "a test")
            .expect_err("short keys are refused")
            .to_string();
        assert!(
            short.contains("11 bytes") && short.contains("at least 16"),
            "{short}"
        );
        assert!(!short.contains("tiny-secret"), "{short}");
        assert!(Key::from_bytes(b" \n", "a test").is_err());
        assert!(Key::from_bytes(&vec![b'k'; MAX_KEY_LEN + 1], "a test").is_err());
        assert!(Key::from_bytes(&[b'k'; MIN_KEY_LEN], "a test").is_ok());
    }

    #[test]
    fn key_files_are_trimmed() {
        let dir = tempfile::tempdir().expect("test setup");
        let path = dir.path().join("key");
        std::fs::write(&path, b"  0123456789abcdef0123456789abcdef\r\n").expect("test setup");
        let from_file = Key::from_file(&path).expect("test setup");
        assert_eq!(
            from_file.client_tag(ToRelay, &[1; 32], &[2; 32]),
            key().client_tag(ToRelay, &[1; 32], &[2; 32])
        );
        assert!(from_file.source().contains("key"));
        let missing = Key::from_file(&dir.path().join("nope")).expect_err("test setup");
        assert!(missing.to_string().contains("nope"), "{missing}");
        assert!(Key::from_file(dir.path()).is_err());
    }

    #[test]
    fn nonces_are_fresh() {
        let a = fresh_nonce().expect("test setup");
        let b = fresh_nonce().expect("test setup");
        assert_ne!(a, b);
        assert_ne!(Challenge::fresh(ToRelay).expect("test setup").nonce(), &a);
    }
}
