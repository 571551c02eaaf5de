//! Consistent probability sampling's numbers (OpenTelemetry "TraceState: Probability
//! Sampling", OTEP 235): a sampling ratio as a 56-bit rejection threshold, the threshold as
//! the `th` value of the span's W3C tracestate (`ot=th:<hex>`), and the decision against a
//! trace id. Pure functions.
//!
//! - **Randomness** (`rv`): the trace id's least significant 56 bits (its last 7 bytes, big
//!   endian), which W3C Trace Context Level 2 makes random when the `random` flag is set
//!   (every trace id of the agent: derived ones are uniformly distributed hashes, the others
//!   come from a random generator). No explicit `rv` is written.
//! - **Threshold** (`th`): `(1 - ratio) * 2^56`, rounded to 4 significant hexadecimal digits
//!   (the precision the specification recommends to SDKs), more for ratios near zero: one
//!   more digit per leading `f`, up to 12 (the specification's algorithm, on the ratio's
//!   binary exponent).
//! - **Decision**: keep when `rv >= th`. So a connection kept at ratio `p` is kept at every
//!   ratio above `p`: two agents with different ratios agree on every connection the lower
//!   ratio keeps.
//! - **Encoding**: `th` is the threshold in 14 hexadecimal digits, lower case, trailing zeros
//!   removed (`0` for a threshold of zero: keep everything, adjusted count 1).

use std::fmt;

use opentelemetry::trace::TraceId;

/// 2^56: thresholds and randomness values are below it.
pub const MAX_THRESHOLD: u64 = 1 << 56;

/// The significant hexadecimal digits of a threshold, before the adjustment for leading
/// `f`s: what the specification recommends to SDKs.
const PRECISION: i32 = 4;

/// A rejection threshold: the number of the 2^56 randomness values that are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Threshold(u64);

impl Threshold {
    /// Keep everything (`th:0`, adjusted count 1): always-on, and sessions a rule keeps.
    pub const ALWAYS: Self = Self(0);

    /// The threshold of `ratio`, in (0, 1]; `None` for a ratio outside it (zero is not a
    /// probability: never sampling is `always_off`).
    pub fn from_ratio(ratio: f64) -> Option<Self> {
        if !(ratio > 0.0 && ratio <= 1.0) {
            return None;
        }
        if ratio == 1.0 {
            return Some(Self::ALWAYS);
        }
        // The ratio's binary exponent e (ratio = m * 2^e, m in [0.5, 1)) adds a digit for
        // every four bits of leading `f`s: floor(e / -4) (e <= 0 here).
        let exponent = binary_exponent(ratio);
        let precision = (PRECISION + (-exponent).div_euclid(4)).clamp(1, 12);
        // 2 - ratio is in [1, 2): its 52-bit mantissa holds the rejection probability's 13
        // hexadecimal digits. Half of the last kept digit is added to round.
        let rejection = 2.0 - ratio + 0.5 * f64::powi(2.0, -4 * precision);
        let digits = if rejection >= 2.0 {
            (1u64 << 52) - 1
        } else {
            rejection.to_bits() & ((1u64 << 52) - 1)
        };
        let shift = 4 * (13 - precision) as u32;
        let kept = digits >> shift;
        Some(Self(kept << (56 - 4 * precision as u32)))
    }

    /// The threshold as a 56-bit integer.
    pub const fn value(self) -> u64 {
        self.0
    }

    /// The probability of keeping a span: `(2^56 - th) / 2^56`.
    pub fn probability(self) -> f64 {
        (MAX_THRESHOLD - self.0) as f64 / MAX_THRESHOLD as f64
    }

    /// Whether a span of `trace_id` is kept: its randomness is at or above the threshold.
    pub fn keeps(self, trace_id: TraceId) -> bool {
        randomness(trace_id) >= self.0
    }

    /// The `th` value: 14 hexadecimal digits, trailing zeros removed (`0` for zero).
    pub fn th(self) -> ThValue {
        ThValue(self)
    }
}

/// A [`Threshold`]'s `th` value, written without allocating.
#[derive(Debug, Clone, Copy)]
pub struct ThValue(Threshold);

impl fmt::Display for ThValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = self.0.0;
        if value == 0 {
            return f.write_str("0");
        }
        let mut digits = value;
        let mut width = 14;
        while digits & 0xf == 0 {
            digits >>= 4;
            width -= 1;
        }
        write!(f, "{digits:0width$x}")
    }
}

/// The trace id's randomness: its last 7 bytes, big-endian.
pub fn randomness(trace_id: TraceId) -> u64 {
    u64::from_be_bytes(trace_id.to_bytes()[8..16].try_into().unwrap_or_default())
        & (MAX_THRESHOLD - 1)
}

/// `e` such that `x = m * 2^e` with `m` in [0.5, 1), for a positive, finite `x`.
fn binary_exponent(x: f64) -> i32 {
    let biased = ((x.to_bits() >> 52) & 0x7ff) as i32;
    if biased == 0 {
        // Subnormal: scale into the normal range first.
        return binary_exponent(x * f64::powi(2.0, 64)) - 64;
    }
    biased - 1022
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The specification's table ("Converting floating-point probability to threshold
    /// value"), precision 4.
    #[test]
    fn thresholds_are_the_specifications_golden_values() {
        let cases: [(f64, &str); 13] = [
            (1.0, "0"),
            (0.5, "8"),
            (1.0 / 3.0, "aaab"),
            (0.25, "c"),
            (0.2, "cccd"),
            (0.125, "e"),
            (0.1, "e666"),
            (0.0625, "f"),
            (0.01, "fd70a"),
            (0.001, "ffbe77"),
            (0.0001, "fff9724"),
            (0.00001, "ffff583a"),
            (0.000001, "ffffef39"),
        ];
        for (ratio, th) in cases {
            let threshold = Threshold::from_ratio(ratio).unwrap();
            assert_eq!(threshold.th().to_string(), th, "ratio {ratio}");
        }
        // The actual probabilities of the table.
        let probability = |ratio| Threshold::from_ratio(ratio).unwrap().probability();
        assert_eq!(probability(0.1), 0.100006103515625);
        assert_eq!(probability(0.01), 0.010000228881835938);
        assert_eq!(probability(0.5), 0.5);
    }

    #[test]
    fn the_th_value_keeps_leading_zeros_and_drops_trailing_ones() {
        assert_eq!(Threshold(0x80_0000_0000_0000).th().to_string(), "8");
        assert_eq!(Threshold(0x08_0000_0000_0000).th().to_string(), "08");
        assert_eq!(Threshold(0xfd_70a4_0000_0000).th().to_string(), "fd70a4");
        assert_eq!(Threshold(1).th().to_string(), "00000000000001");
        assert_eq!(
            Threshold(0xff_ffff_ffff_ffff).th().to_string(),
            "ffffffffffffff"
        );
        // 0.99 keeps its leading zero digit: (1 - 0.99) * 2^56 = 0x028f5c...
        assert_eq!(
            Threshold::from_ratio(0.99).unwrap().th().to_string(),
            "028f"
        );
        assert_eq!(Threshold::ALWAYS.th().to_string(), "0");
    }

    #[test]
    fn ratios_outside_zero_to_one_have_no_threshold() {
        for ratio in [0.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
            assert_eq!(Threshold::from_ratio(ratio), None, "{ratio}");
        }
        // The smallest probability the specification defines, and below it: all `f`s.
        assert!(Threshold::from_ratio(f64::powi(2.0, -56)).is_some());
        assert_eq!(
            Threshold::from_ratio(1e-300).unwrap().th().to_string(),
            "ffffffffffff"
        );
    }

    #[test]
    fn the_decision_compares_the_last_seven_bytes() {
        let id = |last7: u64| {
            let mut bytes = [0xab; 16];
            bytes[9..16].copy_from_slice(&last7.to_be_bytes()[1..8]);
            TraceId::from_bytes(bytes)
        };
        let half = Threshold::from_ratio(0.5).unwrap();
        assert_eq!(randomness(id(0x80_0000_0000_0000)), 0x80_0000_0000_0000);
        // Byte 8 is not part of the randomness.
        assert!(half.keeps(id(0x80_0000_0000_0000)));
        assert!(!half.keeps(id(0x7f_ffff_ffff_ffff)));
        assert!(Threshold::ALWAYS.keeps(id(0)));
        // A higher ratio keeps a superset.
        let tenth = Threshold::from_ratio(0.1).unwrap();
        assert!(tenth > half);
        for r in [
            0,
            0x7f_ffff_ffff_ffff,
            0x80_0000_0000_0000,
            0xe6_6600_0000_0000,
        ] {
            assert!(!tenth.keeps(id(r)) || half.keeps(id(r)));
        }
        assert!(tenth.keeps(id(0xe6_6600_0000_0000)));
        assert!(!tenth.keeps(id(0xe6_65ff_ffff_ffff)));
    }
}
