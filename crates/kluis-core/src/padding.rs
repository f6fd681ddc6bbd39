//! Padmé padding (Nikitin et al., PETS 2019): leaks O(log log n) bits of the size, costs ≤ 12%.

/// How many zero bytes Padmé appends to a plaintext of `len` bytes.
pub fn padme_padding(len: u64) -> u64 {
    if len < 2 {
        return 0;
    }
    let e = 63 - u64::from(len.leading_zeros()); // floor(log2 len)
    let s = 64 - u64::from(e.leading_zeros()); // floor(log2 e) + 1
    let last_bits = e - s;
    let mask = (1u64 << last_bits) - 1;
    // (len + mask) & !mask, without overflow near u64::MAX.
    let padded = len.checked_add(mask).map_or(!mask, |v| v & !mask);
    padded.saturating_sub(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // From the Padmé paper's definition: lengths whose low bits are already zero stay.
        assert_eq!(padme_padding(0), 0);
        assert_eq!(padme_padding(1), 0);
        assert_eq!(padme_padding(9), 1); // e=3, s=2, 1 low bit → 10
        assert_eq!(padme_padding(1000), 24); // e=9, s=4, 5 low bits: 1000 → 1024
        assert_eq!(padme_padding(1024), 0);
    }

    #[test]
    fn overhead_is_at_most_12_percent() {
        for len in (1u64..200_000)
            .step_by(97)
            .chain([u64::MAX / 2, u64::MAX - 1])
        {
            let p = padme_padding(len);
            assert!(p as f64 <= len as f64 * 0.12 + 1.0, "{len} {p}");
        }
    }
}
