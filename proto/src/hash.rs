//! Pulsar's key hash, shared by the broker (Key_Shared) and the client (partition routing):
//! MurmurHash3 x86 32-bit with seed 0, sign bit cleared (`Murmur3_32Hash` in Pulsar's Java
//! code), so that every Pulsar client and Magnetar agree on where a key goes.

/// Pulsar's `Murmur3_32Hash.makeHash`: MurmurHash3 x86 32-bit, seed 0, masked to be
/// non-negative.
pub fn pulsar_key_hash(key: &[u8]) -> u32 {
    murmur3_32(key, 0) & (i32::MAX as u32)
}

/// MurmurHash3, x86 32-bit variant.
pub fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mix_k1 = |k1: u32| k1.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    let mut h1 = seed;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let k1 = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        h1 ^= mix_k1(k1);
        h1 = h1.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = chunks.remainder();
    let mut k1 = 0u32;
    for (index, &byte) in tail.iter().enumerate() {
        k1 ^= u32::from(byte) << (8 * index);
    }
    if !tail.is_empty() {
        h1 ^= mix_k1(k1);
    }
    h1 ^= data.len() as u32;
    h1 ^= h1 >> 16;
    h1 = h1.wrapping_mul(0x85eb_ca6b);
    h1 ^= h1 >> 13;
    h1 = h1.wrapping_mul(0xc2b2_ae35);
    h1 ^ (h1 >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur3_matches_the_reference_vectors() {
        // Published MurmurHash3_x86_32 test vectors (SMHasher / Wikipedia).
        assert_eq!(murmur3_32(b"", 0), 0);
        assert_eq!(murmur3_32(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3_32(b"", 0xffff_ffff), 0x81f1_6f39);
        assert_eq!(murmur3_32(&[0, 0, 0, 0], 0), 0x2362_f9de);
        assert_eq!(murmur3_32(b"aaaa", 0x9747_b28c), 0x5a97_808a);
        assert_eq!(murmur3_32(b"abc", 0), 0xb3dd_93fa);
        assert_eq!(murmur3_32(b"Hello, world!", 0x9747_b28c), 0x2488_4cba);
        assert_eq!(murmur3_32(b"The quick brown fox jumps over the lazy dog", 0x9747_b28c), 0x2fa8_26cd);
    }

    #[test]
    fn the_key_hash_clears_the_sign_bit() {
        // Raw murmur3 of this key has the top bit set (0xa8d02b9a); Pulsar masks it.
        let scratched = b"I will not buy this record, it is scratched.";
        assert_eq!(murmur3_32(scratched, 0), 2_832_214_938);
        assert_eq!(pulsar_key_hash(scratched), 684_731_290);
    }
}
