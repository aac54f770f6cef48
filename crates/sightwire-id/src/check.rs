//! Check characters: CRC-8 over the six ID bytes, written as two hex digits.
//!
//! Why a CRC: a person types hex digits, so every typing error we must catch is an error
//! in a 4-bit group. A substitution changes one group (a burst of at most 4 bits) and a
//! swap of two neighbouring digits changes two adjacent groups (a burst of at most 8
//! bits). A CRC whose generator has degree 8 and a non-zero constant term detects
//! *every* burst of length 8 or less anywhere in the codeword (ID bytes followed by the
//! CRC byte), including bursts that touch the check digits themselves. The property
//! tests check this over every single edit of random IDs; `spec/id.md` gives the proof
//! sketch and the parameters.

/// Number of check characters appended to the 12 digits of a device ID in its checked
/// human form.
pub const CHECK_CHARS: usize = 2;

/// The CRC-8 generator polynomial x⁸ + x² + x + 1, without its x⁸ term.
const POLYNOMIAL: u8 = 0x07;

/// CRC-8 with polynomial `0x07`, initial value `0x00`, no reflection and no final XOR
/// (the "CRC-8/SMBUS" parameters; its check value over `b"123456789"` is `0xF4`).
///
/// This is the checksum behind the check characters of
/// [`DeviceId::to_checked_string`](crate::DeviceId::to_checked_string).
pub fn crc8(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |crc, &byte| {
        (0..8).fold(crc ^ byte, |crc, _| {
            if crc & 0x80 != 0 {
                (crc << 1) ^ POLYNOMIAL
            } else {
                crc << 1
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc8_smbus_check_value() {
        assert_eq!(crc8(b"123456789"), 0xF4);
        assert_eq!(crc8(&[]), 0x00);
    }

    #[test]
    fn codeword_with_crc_appended_has_zero_remainder() {
        let data = [0x1C, 0xC3, 0x16, 0xAB, 0xCD, 0xEF];
        let crc = crc8(&data);
        let mut codeword = data.to_vec();
        codeword.push(crc);
        assert_eq!(crc8(&codeword), 0);
    }
}
