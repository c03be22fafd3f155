//! CRC-32C (Castagnoli), the checksum of each record: table-driven, no dependency.

const POLY: u32 = 0x82F6_3B78;

const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// Continues `crc` (start from 0) over `data`.
pub(super) fn update(crc: u32, data: &[u8]) -> u32 {
    let mut crc = !crc;
    for &byte in data {
        crc = TABLE[((crc ^ u32::from(byte)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod test {
    #[test]
    fn matches_the_standard_check_value() {
        // The CRC-32C of "123456789" (RFC 3720, B.4).
        assert_eq!(super::update(0, b"123456789"), 0xE306_9283);
        assert_eq!(
            super::update(super::update(0, b"1234"), b"56789"),
            0xE306_9283
        );
    }
}
