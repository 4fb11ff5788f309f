//! Which input partition a lead id lands on, computed the way producers
//! do, so the query API can point a caller at the instance that holds it.

use crate::config::Partitioner;

/// Kafka's murmur2 (the Java client's default partitioner for keyed
/// records): seed 0x9747b28c, little-endian 4-byte blocks.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = blocks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of a keyed record among `partitions`.
pub fn partition_of(partitioner: Partitioner, key: &[u8], partitions: i32) -> i32 {
    let partitions = partitions.max(1);
    match partitioner {
        // Java: toPositive(murmur2(key)) % n, toPositive = & 0x7fffffff.
        Partitioner::Murmur2Random => (murmur2(key) & 0x7fff_ffff) % partitions,
        // librdkafka: crc32(key) % n.
        Partitioner::ConsistentRandom => (crc32fast::hash(key) % partitions as u32) as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas_test_vectors() {
        // From Kafka's UtilsTest.testMurmur2.
        let cases: [(&str, i32); 6] = [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ];
        for (key, want) in cases {
            assert_eq!(murmur2(key.as_bytes()), want, "{key}");
        }
    }

    #[test]
    fn partitions_stay_in_range() {
        for key in ["a", "lead-000001", "", "ünïcode"] {
            for n in [1, 3, 7] {
                for p in [Partitioner::Murmur2Random, Partitioner::ConsistentRandom] {
                    let got = partition_of(p, key.as_bytes(), n);
                    assert!((0..n).contains(&got), "{key} {n} {got}");
                }
            }
        }
    }
}
