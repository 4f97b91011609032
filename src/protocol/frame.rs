//! Command codes and the byte layout of each AN3155 phase.

use std::fmt;

/// Acknowledge.
pub const ACK: u8 = 0x79;
/// Negative acknowledge.
pub const NACK: u8 = 0x1F;
/// The auto-baud synchronisation byte.
pub const SYNC: u8 = 0x7F;
/// Most bytes one Read Memory or Write Memory command moves.
pub const MAX_BLOCK: usize = 256;
/// Most bytes of data in one Special (0x50) request.
pub const MAX_SPECIAL_DATA: usize = 128;
/// Most bytes of the second packet of an Extended Special (0x51) request.
pub const MAX_EXTENDED_SPECIAL_DATA: usize = 1024;
/// Most pages one Erase (0x43) command can name.
pub const MAX_LEGACY_ERASE_PAGES: usize = 255;
/// Page counts at or above this in Extended Erase are special codes.
pub const EXTENDED_ERASE_SPECIAL_BASE: u16 = 0xFFF0;

/// Every USART bootloader command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[repr(u8)]
pub enum Command {
    /// Get (0x00): version and the list of supported commands.
    Get = 0x00,
    /// Get Version (0x01).
    GetVersion = 0x01,
    /// Get ID (0x02): the product ID.
    GetId = 0x02,
    /// Read Memory (0x11).
    ReadMemory = 0x11,
    /// Go (0x21).
    Go = 0x21,
    /// Write Memory (0x31).
    WriteMemory = 0x31,
    /// Erase (0x43), one-byte page numbers (V2.x parts).
    Erase = 0x43,
    /// Extended Erase (0x44), two-byte page numbers (V3.0 and later).
    ExtendedErase = 0x44,
    /// Special (0x50).
    Special = 0x50,
    /// Extended Special (0x51).
    ExtendedSpecial = 0x51,
    /// Write Protect (0x63).
    WriteProtect = 0x63,
    /// Write Unprotect (0x73).
    WriteUnprotect = 0x73,
    /// Readout Protect (0x82).
    ReadoutProtect = 0x82,
    /// Readout Unprotect (0x92).
    ReadoutUnprotect = 0x92,
    /// Get Checksum (0xA1), V3.3 and later.
    GetChecksum = 0xA1,
}

impl Command {
    /// Every command, in code order.
    pub const ALL: [Command; 15] = [
        Command::Get,
        Command::GetVersion,
        Command::GetId,
        Command::ReadMemory,
        Command::Go,
        Command::WriteMemory,
        Command::Erase,
        Command::ExtendedErase,
        Command::Special,
        Command::ExtendedSpecial,
        Command::WriteProtect,
        Command::WriteUnprotect,
        Command::ReadoutProtect,
        Command::ReadoutUnprotect,
        Command::GetChecksum,
    ];

    /// The command byte.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The command for a byte, if it is a USART bootloader command.
    pub fn from_code(code: u8) -> Option<Command> {
        Command::ALL.iter().copied().find(|c| c.code() == code)
    }

    /// Whether bytes sent ahead of an ACK can be left over safely. When a command or address
    /// phase is NACKed, the bootloader reads the bytes already sent after it as new commands
    /// (links.md §10.3). They are harmless only if no two adjacent bytes form a command and its
    /// complement: then every misread pair is NACKed, whatever byte a loss shifted the parse
    /// to, and the last byte, left waiting for its partner, is paired with the 0x7F of a
    /// re-sync (0x80 is no command).
    pub fn misparse_safe(leftover: &[u8]) -> bool {
        !leftover
            .windows(2)
            .any(|w| w[1] == !w[0] && Command::from_code(w[0]).is_some())
    }

    /// The two bytes that open the command: the code and its complement.
    pub fn frame(self) -> [u8; 2] {
        [self.code(), !self.code()]
    }

    /// The name AN3155 gives the command.
    pub fn name(self) -> &'static str {
        match self {
            Command::Get => "Get",
            Command::GetVersion => "Get Version",
            Command::GetId => "Get ID",
            Command::ReadMemory => "Read Memory",
            Command::Go => "Go",
            Command::WriteMemory => "Write Memory",
            Command::Erase => "Erase",
            Command::ExtendedErase => "Extended Erase",
            Command::Special => "Special",
            Command::ExtendedSpecial => "Extended Special",
            Command::WriteProtect => "Write Protect",
            Command::WriteUnprotect => "Write Unprotect",
            Command::ReadoutProtect => "Readout Protect",
            Command::ReadoutUnprotect => "Readout Unprotect",
            Command::GetChecksum => "Get Checksum",
        }
    }

    /// Whether the device performs a system reset after this command completes.
    pub fn resets_device(self) -> bool {
        matches!(
            self,
            Command::WriteProtect
                | Command::WriteUnprotect
                | Command::ReadoutProtect
                | Command::ReadoutUnprotect
        )
    }

    /// Whether the bootloader accepts the command while readout protection is active.
    pub fn allowed_under_rdp(self) -> bool {
        matches!(
            self,
            Command::Get | Command::GetVersion | Command::GetId | Command::ReadoutUnprotect
        )
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (0x{:02X})", self.name(), self.code())
    }
}

/// The XOR checksum that closes a multi-byte field.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |acc, b| acc ^ b)
}

/// Whether a field that ends with its XOR checksum is intact.
pub fn checksum_ok(field_with_checksum: &[u8]) -> bool {
    !field_with_checksum.is_empty() && checksum(field_with_checksum) == 0
}

/// A 32-bit value sent MSB first and closed by its XOR (addresses, and Get Checksum fields).
pub fn u32_field(value: u32) -> [u8; 5] {
    let b = value.to_be_bytes();
    [b[0], b[1], b[2], b[3], checksum(&b)]
}

/// Decode a 5-byte MSB-first value with checksum; `None` if the checksum is wrong.
pub fn parse_u32_field(field: &[u8]) -> Option<u32> {
    if field.len() != 5 || !checksum_ok(field) {
        return None;
    }
    Some(u32::from_be_bytes([field[0], field[1], field[2], field[3]]))
}

/// The count phase of Read Memory: `N, ~N` with N = length - 1 (length 1..=256).
pub fn read_count(len: usize) -> Option<[u8; 2]> {
    if len == 0 || len > MAX_BLOCK {
        return None;
    }
    let n = (len - 1) as u8;
    Some([n, !n])
}

/// The data phase of Write Memory: `N, data, X` with N = length - 1 (length 1..=256).
pub fn write_data(data: &[u8]) -> Option<Vec<u8>> {
    if data.is_empty() || data.len() > MAX_BLOCK {
        return None;
    }
    let mut out = Vec::with_capacity(data.len() + 2);
    out.push((data.len() - 1) as u8);
    out.extend_from_slice(data);
    out.push(checksum(&out));
    Some(out)
}

/// What an Extended Erase (0x44) request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EraseRequest {
    /// Erase these pages (global numbering across banks), at most 0xFFF0 of them.
    Pages(Vec<u16>),
    /// Mass erase (`FFFF`).
    Mass,
    /// Erase bank 1 (`FFFE`).
    Bank1,
    /// Erase bank 2 (`FFFD`).
    Bank2,
}

impl EraseRequest {
    /// The phase after the command pair, checksum included. `None` for an empty or oversized list.
    pub fn extended_frame(&self) -> Option<Vec<u8>> {
        let mut out = match self {
            EraseRequest::Mass => vec![0xFF, 0xFF],
            EraseRequest::Bank1 => vec![0xFF, 0xFE],
            EraseRequest::Bank2 => vec![0xFF, 0xFD],
            EraseRequest::Pages(pages) => {
                if pages.is_empty() || pages.len() > EXTENDED_ERASE_SPECIAL_BASE as usize {
                    return None;
                }
                let mut out = Vec::with_capacity(2 + pages.len() * 2 + 1);
                out.extend_from_slice(&((pages.len() - 1) as u16).to_be_bytes());
                for page in pages {
                    out.extend_from_slice(&page.to_be_bytes());
                }
                out
            }
        };
        out.push(checksum(&out));
        Some(out)
    }

    /// The phase of the legacy Erase (0x43). Only page lists of up to 255 pages numbered below
    /// 256, and mass erase, exist there.
    pub fn legacy_frame(&self) -> Option<Vec<u8>> {
        match self {
            EraseRequest::Mass => Some(vec![0xFF, 0x00]),
            EraseRequest::Pages(pages) => {
                if pages.is_empty()
                    || pages.len() > MAX_LEGACY_ERASE_PAGES
                    || pages.iter().any(|&p| p > 0xFF)
                {
                    return None;
                }
                let mut out = Vec::with_capacity(pages.len() + 2);
                out.push((pages.len() - 1) as u8);
                out.extend(pages.iter().map(|&p| p as u8));
                out.push(checksum(&out));
                Some(out)
            }
            EraseRequest::Bank1 | EraseRequest::Bank2 => None,
        }
    }
}

/// The phase of Write Protect (0x63): `N, codes, X`.
pub fn write_protect_frame(codes: &[u8]) -> Option<Vec<u8>> {
    if codes.is_empty() || codes.len() > 256 {
        return None;
    }
    let mut out = Vec::with_capacity(codes.len() + 2);
    out.push((codes.len() - 1) as u8);
    out.extend_from_slice(codes);
    out.push(checksum(&out));
    Some(out)
}

/// A 16-bit opcode for Special/Extended Special: `op_hi op_lo X`.
pub fn special_opcode(op: u16) -> [u8; 3] {
    let b = op.to_be_bytes();
    [b[0], b[1], b[0] ^ b[1]]
}

/// A length-prefixed packet of Special/Extended Special: `len_hi len_lo data X`, where X covers
/// both length bytes and the data.
pub fn special_packet(data: &[u8]) -> Option<Vec<u8>> {
    if data.len() > u16::MAX as usize {
        return None;
    }
    let mut out = Vec::with_capacity(data.len() + 3);
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
    out.push(checksum(&out));
    Some(out)
}

/// A protocol version byte such as 0x31, shown as "3.1".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtocolVersion(pub u8);

impl ProtocolVersion {
    /// Major version (high nibble).
    pub fn major(self) -> u8 {
        self.0 >> 4
    }
    /// Minor version (low nibble).
    pub fn minor(self) -> u8 {
        self.0 & 0x0F
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major(), self.minor())
    }
}

impl serde::Serialize for ProtocolVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// The body of a Get reply, between the first ACK and the closing ACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetReply {
    /// Protocol version.
    pub version: ProtocolVersion,
    /// Command codes as listed, including codes this crate does not know.
    pub codes: Vec<u8>,
}

impl GetReply {
    /// Build the body bytes (`N ver codes…`) as a device sends them.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.codes.len() + 2);
        out.push(self.codes.len() as u8);
        out.push(self.version.0);
        out.extend_from_slice(&self.codes);
        out
    }

    /// Whether the list holds `command`.
    pub fn supports(&self, command: Command) -> bool {
        self.codes.contains(&command.code())
    }

    /// Listed commands that this crate knows.
    pub fn known_commands(&self) -> Vec<Command> {
        self.codes
            .iter()
            .filter_map(|&c| Command::from_code(c))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misparse_safety_of_leftover_bytes() {
        // A 256-aligned flash address and its checksum: no command pair at any offset.
        assert!(Command::misparse_safe(&[0x08, 0x00, 0x12, 0x00, 0x1A]));
        // links.md §10.3: 0x0800738C holds 73 8C (Write Unprotect).
        assert!(!Command::misparse_safe(&[0x08, 0x00, 0x73, 0x8C, 0xF7]));
        // The dangerous pairs anywhere in a data frame.
        for pair in [[0x82, 0x7D], [0x73, 0x8C], [0x92, 0x6D]] {
            let mut frame = vec![0x03, 0x10, 0x20];
            frame.extend_from_slice(&pair);
            assert!(!Command::misparse_safe(&frame), "{pair:02X?}");
        }
        // A count byte and its complement form a command pair when N is a command code
        // (0x11 = Read Memory), but not for a 256-byte read (FF 00).
        assert!(!Command::misparse_safe(&[0x11, 0xEE]));
        assert!(Command::misparse_safe(&[0xFF, 0x00]));
        // A complement pair whose first byte is no command is harmless (it is NACKed).
        assert!(Command::misparse_safe(&[0x80, 0x7F, 0x55]));
        assert!(Command::misparse_safe(&[]));
    }

    #[test]
    fn complements_match_an3155_table() {
        let expected = [
            (Command::Get, 0xFF),
            (Command::GetVersion, 0xFE),
            (Command::GetId, 0xFD),
            (Command::ReadMemory, 0xEE),
            (Command::Go, 0xDE),
            (Command::WriteMemory, 0xCE),
            (Command::Erase, 0xBC),
            (Command::ExtendedErase, 0xBB),
            (Command::Special, 0xAF),
            (Command::ExtendedSpecial, 0xAE),
            (Command::WriteProtect, 0x9C),
            (Command::WriteUnprotect, 0x8C),
            (Command::ReadoutProtect, 0x7D),
            (Command::ReadoutUnprotect, 0x6D),
            (Command::GetChecksum, 0x5E),
        ];
        for (cmd, comp) in expected {
            assert_eq!(cmd.frame()[1], comp, "{cmd}");
            assert_eq!(Command::from_code(cmd.code()), Some(cmd));
        }
        assert_eq!(Command::from_code(0x32), None);
    }

    #[test]
    fn address_frames_from_reference() {
        assert_eq!(u32_field(0x0800_0000), [0x08, 0x00, 0x00, 0x00, 0x08]);
        assert_eq!(u32_field(0x0800_0100), [0x08, 0x00, 0x01, 0x00, 0x09]);
        assert_eq!(
            parse_u32_field(&[0x08, 0x00, 0x01, 0x00, 0x09]),
            Some(0x0800_0100)
        );
        assert_eq!(parse_u32_field(&[0x08, 0x00, 0x01, 0x00, 0x08]), None);
    }

    #[test]
    fn write_and_read_phases_from_reference() {
        assert_eq!(
            write_data(&[0xDE, 0xAD, 0xBE, 0xEF]).expect("test setup"),
            vec![0x03, 0xDE, 0xAD, 0xBE, 0xEF, 0x21]
        );
        assert_eq!(read_count(256), Some([0xFF, 0x00]));
        assert_eq!(read_count(0), None);
        assert_eq!(read_count(257), None);
        assert!(write_data(&[0; 257]).is_none());
    }

    #[test]
    fn extended_erase_frames_from_reference() {
        let pages = EraseRequest::Pages(vec![0, 1, 2]);
        assert_eq!(
            pages.extended_frame().expect("test setup"),
            vec![0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, 0x02, 0x01]
        );
        assert_eq!(
            EraseRequest::Mass.extended_frame().expect("test setup"),
            vec![0xFF, 0xFF, 0x00]
        );
        assert_eq!(
            EraseRequest::Bank1.extended_frame().expect("test setup"),
            vec![0xFF, 0xFE, 0x01]
        );
        assert_eq!(
            EraseRequest::Bank2.extended_frame().expect("test setup"),
            vec![0xFF, 0xFD, 0x02]
        );
        assert_eq!(EraseRequest::Pages(vec![]).extended_frame(), None);
    }

    #[test]
    fn legacy_erase_frames() {
        assert_eq!(
            EraseRequest::Mass.legacy_frame().expect("test setup"),
            vec![0xFF, 0x00]
        );
        assert_eq!(
            EraseRequest::Pages(vec![0, 1, 2])
                .legacy_frame()
                .expect("test setup"),
            vec![0x02, 0x00, 0x01, 0x02, 0x01]
        );
        assert_eq!(EraseRequest::Pages(vec![300]).legacy_frame(), None);
        assert_eq!(EraseRequest::Bank2.legacy_frame(), None);
    }

    #[test]
    fn write_protect_frame_from_reference() {
        assert_eq!(
            write_protect_frame(&[0, 1]).expect("test setup"),
            vec![0x01, 0x00, 0x01, 0x00]
        );
    }

    #[test]
    fn get_reply_of_a_v31_part() {
        let wire = [
            0x0B, 0x31, 0x00, 0x01, 0x02, 0x11, 0x21, 0x31, 0x44, 0x63, 0x73, 0x82, 0x92,
        ];
        let reply = GetReply {
            version: ProtocolVersion(0x31),
            codes: wire[2..].to_vec(),
        };
        assert_eq!(reply.encode(), wire.to_vec());
        assert!(reply.supports(Command::ExtendedErase));
        assert!(!reply.supports(Command::GetChecksum));
        assert_eq!(reply.version.to_string(), "3.1");
    }

    #[test]
    fn special_frames() {
        assert_eq!(special_opcode(0x0082), [0x00, 0x82, 0x82]);
        assert_eq!(
            special_packet(&[1, 2, 3, 4]).expect("test setup"),
            vec![0x00, 0x04, 1, 2, 3, 4, 0x04 ^ 1 ^ 2 ^ 3 ^ 4]
        );
    }
}
