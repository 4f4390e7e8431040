//! Human sizes: `512M`, `10G`, `1T`, `4096`. Suffixes are binary (K = 1024), as in Sheepdog's dog.

/// A size string that could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot read size {input:?}: {reason}; write a number of bytes or a number with K, M, G or T (binary units), e.g. 512M or 10G"
)]
pub struct ParseSizeError {
    pub input: String,
    pub reason: String,
}

/// Parses a size with binary suffixes.
pub fn parse(input: &str) -> Result<u64, ParseSizeError> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(input)
        .map_err(|e| ParseSizeError {
            input: input.to_owned(),
            reason: e.to_string(),
        })
}

/// Formats bytes the way `dog vdi list` shows them: `10 GiB`, `512 MiB`, `3.5 KiB`.
pub fn format(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_suffixes() {
        assert_eq!(parse("512M").unwrap(), 512 << 20);
        assert_eq!(parse("10G").unwrap(), 10 << 30);
        assert_eq!(parse("1T").unwrap(), 1 << 40);
        assert_eq!(parse("4096").unwrap(), 4096);
        assert!(parse("ten gigs").is_err());
    }

    #[test]
    fn formats_for_people() {
        assert_eq!(format(10 << 30), "10 GiB");
        assert_eq!(format(1536), "1.5 KiB");
        assert_eq!(format(0), "0 B");
    }
}
