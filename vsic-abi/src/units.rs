//! Text forms of sizes, rates and durations, as users type them on the
//! command lines of `vsicd` and `vsicctl` ("128M", "1G", "50us").

use std::time::Duration;

/// Why a size or duration could not be parsed; the message quotes the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("'{0}' is not a size (expected e.g. 4096, 64M, 1G)")]
    NotASize(String),
    #[error("'{text}': unknown size suffix '{suffix}' (use K, M, G or T)")]
    SizeSuffix { text: String, suffix: String },
    #[error("'{0}': size too large")]
    SizeTooLarge(String),
    #[error("'{0}' is not a duration (expected e.g. 50us, 2ms, 1s)")]
    NotADuration(String),
    #[error("'{text}': unknown duration suffix '{suffix}' (use ns, us, ms or s)")]
    DurationSuffix { text: String, suffix: String },
}

/// Parses a byte size: a plain number or one with a binary suffix
/// K, M, G, T (optionally followed by "iB" or "B"): "4096", "64M", "1GiB".
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(UnitError::NotASize(text.to_string()));
    }
    let n: u64 = num.parse().map_err(|_| UnitError::SizeTooLarge(text.to_string()))?;
    let shift = match suffix.to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(UnitError::SizeSuffix { text: text.to_string(), suffix: suffix.to_string() }),
    };
    n.checked_mul(1u64 << shift).ok_or_else(|| UnitError::SizeTooLarge(text.to_string()))
}

/// Formats a byte count with the largest binary unit that divides it.
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes >= (1 << shift) && bytes % (1 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}")
}

/// Parses a duration: a number with suffix ns, us, ms or s ("50us", "2ms").
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits_end);
    let n: u64 = num.parse().map_err(|_| UnitError::NotADuration(text.to_string()))?;
    match suffix {
        "ns" => Ok(Duration::from_nanos(n)),
        "us" => Ok(Duration::from_micros(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        _ => Err(UnitError::DurationSuffix { text: text.to_string(), suffix: suffix.to_string() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(parse_size("12X").unwrap_err().to_string(), "'12X': unknown size suffix 'X' (use K, M, G or T)");
        assert_eq!(format_size(128 << 20), "128M");
        assert_eq!(format_size(1000), "1000");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("50us"), Ok(Duration::from_micros(50)));
        assert_eq!(parse_duration("2ms"), Ok(Duration::from_millis(2)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5h").is_err());
    }
}
