//! The `Range` header of a download: one byte range, as RFC 9110 writes it.
//!
//! A device resumes a download with `bytes=<n>-`; a multi-range request gains a phone
//! nothing, so it is answered with the whole file, as the RFC allows.

/// What to send of a file of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// The whole file (`200`).
    Whole,
    /// Bytes `start..end` (`206`).
    Part { start: u64, end: u64 },
    /// Nothing of the file is in the range (`416`).
    Unsatisfiable,
}

/// Reads a `Range` header value for a file of `size` bytes. A header that is not a
/// single byte range is ignored (the whole file), as the RFC says.
pub fn parse(header: Option<&str>, size: u64) -> Wanted {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Wanted::Whole;
    };
    if spec.contains(',') {
        return Wanted::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Wanted::Whole;
    };
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (a.trim().is_empty(), num(a), num(b)) {
        // bytes=-n: the last n bytes.
        (true, _, Some(n)) => {
            if n == 0 || size == 0 {
                Wanted::Unsatisfiable
            } else {
                Wanted::Part {
                    start: size.saturating_sub(n),
                    end: size,
                }
            }
        }
        (false, Some(start), last) if b.trim().is_empty() || last.is_some() => {
            if start >= size {
                return Wanted::Unsatisfiable;
            }
            let end = match last {
                Some(l) if l < start => return Wanted::Whole,
                Some(l) => l.saturating_add(1).min(size),
                None => size,
            };
            Wanted::Part { start, end }
        }
        _ => Wanted::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_ranges_are_honoured_and_the_rest_is_the_whole_file() {
        let p = |h: &str| parse(Some(h), 100);
        assert_eq!(p("bytes=0-9"), Wanted::Part { start: 0, end: 10 });
        assert_eq!(
            p("bytes=90-"),
            Wanted::Part {
                start: 90,
                end: 100
            }
        );
        assert_eq!(
            p("bytes=90-500"),
            Wanted::Part {
                start: 90,
                end: 100
            }
        );
        assert_eq!(
            p("bytes=-10"),
            Wanted::Part {
                start: 90,
                end: 100
            }
        );
        assert_eq!(p("bytes=-500"), Wanted::Part { start: 0, end: 100 });
        assert_eq!(p("bytes=100-"), Wanted::Unsatisfiable);
        assert_eq!(p("bytes=-0"), Wanted::Unsatisfiable);
        assert_eq!(p("bytes=5-1"), Wanted::Whole);
        assert_eq!(p("bytes=0-1,5-6"), Wanted::Whole);
        assert_eq!(p("items=0-1"), Wanted::Whole);
        assert_eq!(p("bytes=x-1"), Wanted::Whole);
        assert_eq!(parse(None, 100), Wanted::Whole);
        assert_eq!(parse(Some("bytes=0-"), 0), Wanted::Unsatisfiable);
    }
}
