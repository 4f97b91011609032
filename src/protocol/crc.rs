//! The STM32 CRC unit as the bootloader's Get Checksum (0xA1) computes it.
//!
//! Polynomial 0x04C11DB7, initial value 0xFFFFFFFF, no reflection, no final XOR, fed one 32-bit
//! little-endian memory word at a time, most significant byte first. That is CRC-32/MPEG-2 over
//! byte-swapped words, which the `crc` crate provides; only the word swap is ours.

use crc::{Crc, Digest, CRC_32_MPEG_2};

/// The default CRC polynomial of the STM32 CRC unit.
pub const DEFAULT_POLYNOMIAL: u32 = 0x04C1_1DB7;
/// The default initial value of the STM32 CRC unit.
pub const DEFAULT_INIT: u32 = 0xFFFF_FFFF;

static CRC32: Crc<u32> = Crc::<u32>::new(&CRC_32_MPEG_2);

/// Incremental STM32 CRC over memory bytes in address order.
///
/// Bytes may arrive in pieces of any length; a trailing partial word is held until completed.
pub struct Stm32Crc {
    digest: Digest<'static, u32>,
    pending: [u8; 4],
    pending_len: usize,
}

impl Default for Stm32Crc {
    fn default() -> Self {
        Self::new()
    }
}

impl Stm32Crc {
    /// A CRC with the unit's default polynomial and initial value.
    pub fn new() -> Self {
        Stm32Crc {
            digest: CRC32.digest(),
            pending: [0; 4],
            pending_len: 0,
        }
    }

    /// Feed memory bytes in address order.
    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.pending_len == 0 && bytes.len() >= 4 {
                let whole = bytes.len() / 4 * 4;
                let mut swapped = [0u8; 256];
                for chunk in bytes[..whole].chunks(256) {
                    for (dst, word) in swapped.chunks_exact_mut(4).zip(chunk.chunks_exact(4)) {
                        dst.copy_from_slice(&[word[3], word[2], word[1], word[0]]);
                    }
                    self.digest.update(&swapped[..chunk.len()]);
                }
                bytes = &bytes[whole..];
                continue;
            }
            self.pending[self.pending_len] = bytes[0];
            self.pending_len += 1;
            bytes = &bytes[1..];
            if self.pending_len == 4 {
                let p = self.pending;
                self.digest.update(&[p[3], p[2], p[1], p[0]]);
                self.pending_len = 0;
            }
        }
    }

    /// Number of bytes fed so far that do not yet complete a word.
    pub fn pending_bytes(&self) -> usize {
        self.pending_len
    }

    /// The CRC of the whole words fed so far. Bytes of an incomplete trailing word are ignored,
    /// as the CRC unit only ever sees whole words.
    pub fn finalize(self) -> u32 {
        self.digest.finalize()
    }
}

/// The STM32 CRC of `bytes` (whose length should be a multiple of 4).
pub fn stm32_crc(bytes: &[u8]) -> u32 {
    let mut crc = Stm32Crc::new();
    crc.update(bytes);
    crc.finalize()
}

/// A bitwise CRC with any polynomial and initial value, for the (rare) Get Checksum request that
/// does not use the defaults. Same word feeding as [`stm32_crc`].
pub fn stm32_crc_with(bytes: &[u8], polynomial: u32, init: u32) -> u32 {
    let mut crc = init;
    for word in bytes.chunks_exact(4) {
        let value = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        crc ^= value;
        for _ in 0..32 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ polynomial
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_check_values() {
        assert_eq!(stm32_crc(&[0x78, 0x56, 0x34, 0x12]), 0xDF8A_8A2B);
        assert_eq!(stm32_crc(&[0x01, 0x02, 0x03, 0x04]), 0x1DAB_E74F);
        assert_eq!(stm32_crc(&[0xFF; 4]), 0x0000_0000);
        assert_eq!(stm32_crc(&[0xFF; 1024]), 0xD000_A3E2);
    }

    #[test]
    fn incremental_in_odd_pieces_matches_one_shot() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut crc = Stm32Crc::new();
        for piece in data.chunks(3) {
            crc.update(piece);
        }
        assert_eq!(crc.finalize(), stm32_crc(&data));
    }

    #[test]
    fn bitwise_model_matches_table_model() {
        let data: Vec<u8> = (0..64u32).map(|i| (i * 31) as u8).collect();
        assert_eq!(
            stm32_crc_with(&data, DEFAULT_POLYNOMIAL, DEFAULT_INIT),
            stm32_crc(&data)
        );
        assert_eq!(
            stm32_crc_with(&[0x78, 0x56, 0x34, 0x12], DEFAULT_POLYNOMIAL, DEFAULT_INIT),
            0xDF8A_8A2B
        );
    }
}
