//! The text form of times in every time column: RFC 3339 UTC with exactly
//! six fractional digits, so that the text order of stored times is their
//! time order on both back-ends.

use time::OffsetDateTime;
use time::macros::format_description;

/// `t` as RFC 3339 UTC with exactly six fractional digits
/// (`2023-11-14T22:13:20.000000Z`), so that the text order of stored times
/// is their time order.
pub fn timestamp(t: OffsetDateTime) -> String {
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
    t.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_sort_as_text() {
        let base = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time");
        let a = timestamp(base);
        let b = timestamp(base + time::Duration::microseconds(1));
        let c = timestamp(base + time::Duration::milliseconds(500));
        let d = timestamp(
            (base + time::Duration::seconds(1))
                .to_offset(time::UtcOffset::from_hms(2, 0, 0).expect("offset")),
        );
        assert_eq!(a, "2023-11-14T22:13:20.000000Z");
        assert_eq!(d, "2023-11-14T22:13:21.000000Z");
        assert!(a < b && b < c && c < d, "{a} {b} {c} {d}");
    }
}
