//! Email syntax check and normalisation.
//!
//! Accepted: a careful subset of RFC 5322 `addr-spec` that every mail system
//! delivers to — an ASCII *dot-atom* local part (letters, digits and
//! ``!#$%&'*+/=?^_`{|}~-``, dots only between characters, at most 64 characters)
//! and a host name of at least two LDH labels (letters, digits, hyphens inside,
//! 1–63 characters each, the last one not all digits). Refused on purpose:
//! quoted local parts, comments, IP-literal domains, dotless domains and
//! non-ASCII addresses (an internationalised domain can be entered in its
//! `xn--` form).
//!
//! Normalised: surrounding whitespace trimmed, the whole address lowercased
//! (Trustmesh treats emails case-insensitively and keeps them unique that way),
//! at most 254 characters.

/// Longest accepted address (RFC 5321 path limit less the angle brackets).
pub const MAX_LEN: usize = 254;
/// Longest accepted local part (RFC 5321).
pub const MAX_LOCAL_LEN: usize = 64;
/// Longest accepted domain label (RFC 1035).
pub const MAX_LABEL_LEN: usize = 63;

/// Why an email address was refused. [`EmailError::code`] is stable for API
/// clients; the message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EmailError {
    /// Nothing but whitespace.
    #[error("email is empty")]
    Empty,
    /// More than [`MAX_LEN`] characters.
    #[error("email is longer than {MAX_LEN} characters")]
    TooLong,
    /// A character outside ASCII.
    #[error(
        "email must contain only ASCII characters (write an internationalised domain in its xn-- form)"
    )]
    NonAscii,
    /// No `@`.
    #[error("email must contain an @ between the name and the domain")]
    MissingAt,
    /// More than one `@`.
    #[error("email must contain exactly one @ (quoted names are not accepted)")]
    MultipleAt,
    /// Nothing before the `@`.
    #[error("email has nothing before the @")]
    LocalEmpty,
    /// Local part longer than [`MAX_LOCAL_LEN`].
    #[error("the part before the @ is longer than {MAX_LOCAL_LEN} characters")]
    LocalTooLong,
    /// A character not allowed in the local part.
    #[error(
        "the part before the @ contains {0:?}, which is not allowed (letters, digits, dots and !#$%&'*+/=?^_`{{|}}~- only)"
    )]
    LocalInvalidChar(char),
    /// A dot at the start or end of the local part, or two in a row.
    #[error("the part before the @ must not start or end with a dot or contain two dots in a row")]
    LocalDots,
    /// Nothing after the `@`.
    #[error("email has no domain after the @")]
    DomainEmpty,
    /// A character not allowed in a domain.
    #[error("the domain contains {0:?}; only letters, digits, hyphens and dots are allowed")]
    DomainInvalidChar(char),
    /// An empty domain label (leading, trailing or doubled dot).
    #[error("the domain must not start or end with a dot or contain two dots in a row")]
    DomainEmptyLabel,
    /// A domain label longer than [`MAX_LABEL_LEN`].
    #[error("a part of the domain is longer than {MAX_LABEL_LEN} characters")]
    DomainLabelTooLong,
    /// A domain label starting or ending with a hyphen.
    #[error("a part of the domain starts or ends with a hyphen")]
    DomainLabelHyphen,
    /// A domain without a dot.
    #[error("the domain must have at least two parts, like example.com")]
    DomainSingleLabel,
    /// A top-level domain made of digits only (an IP address, say).
    #[error("the domain must end in a name, not a number")]
    DomainNumericTld,
}

impl EmailError {
    /// A stable machine-readable code (`email_…`).
    pub fn code(&self) -> &'static str {
        match self {
            EmailError::Empty => "email_empty",
            EmailError::TooLong => "email_too_long",
            EmailError::NonAscii => "email_non_ascii",
            EmailError::MissingAt => "email_missing_at",
            EmailError::MultipleAt => "email_multiple_at",
            EmailError::LocalEmpty => "email_local_empty",
            EmailError::LocalTooLong => "email_local_too_long",
            EmailError::LocalInvalidChar(_) => "email_local_invalid_char",
            EmailError::LocalDots => "email_local_dots",
            EmailError::DomainEmpty => "email_domain_empty",
            EmailError::DomainInvalidChar(_) => "email_domain_invalid_char",
            EmailError::DomainEmptyLabel => "email_domain_empty_label",
            EmailError::DomainLabelTooLong => "email_domain_label_too_long",
            EmailError::DomainLabelHyphen => "email_domain_label_hyphen",
            EmailError::DomainSingleLabel => "email_domain_single_label",
            EmailError::DomainNumericTld => "email_domain_numeric_tld",
        }
    }
}

/// Checks `input` and returns its normalised form (trimmed, lowercased).
pub fn normalize(input: &str) -> Result<String, EmailError> {
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(EmailError::Empty);
    }
    if !trimmed.is_ascii() {
        return Err(EmailError::NonAscii);
    }
    // ASCII from here on: bytes are characters.
    if trimmed.len() > MAX_LEN {
        return Err(EmailError::TooLong);
    }
    let email = trimmed.to_ascii_lowercase();
    let (local, domain) = email.split_once('@').ok_or(EmailError::MissingAt)?;
    if domain.contains('@') {
        return Err(EmailError::MultipleAt);
    }
    check_local(local)?;
    check_domain(domain)?;
    Ok(email)
}

/// The local part (before the last `@`) of an address, as given.
pub fn local_part(email: &str) -> &str {
    email.rsplit_once('@').map_or(email, |(local, _)| local)
}

fn check_local(local: &str) -> Result<(), EmailError> {
    if local.is_empty() {
        return Err(EmailError::LocalEmpty);
    }
    if local.len() > MAX_LOCAL_LEN {
        return Err(EmailError::LocalTooLong);
    }
    if let Some(bad) = local.chars().find(|&c| c != '.' && !is_atext(c)) {
        return Err(EmailError::LocalInvalidChar(bad));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(EmailError::LocalDots);
    }
    Ok(())
}

fn check_domain(domain: &str) -> Result<(), EmailError> {
    if domain.is_empty() {
        return Err(EmailError::DomainEmpty);
    }
    if let Some(bad) = domain
        .chars()
        .find(|&c| c != '.' && c != '-' && !c.is_ascii_alphanumeric())
    {
        return Err(EmailError::DomainInvalidChar(bad));
    }
    let labels: Vec<&str> = domain.split('.').collect();
    for label in &labels {
        if label.is_empty() {
            return Err(EmailError::DomainEmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(EmailError::DomainLabelTooLong);
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(EmailError::DomainLabelHyphen);
        }
    }
    if labels.len() < 2 {
        return Err(EmailError::DomainSingleLabel);
    }
    if labels
        .last()
        .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(EmailError::DomainNumericTld);
    }
    Ok(())
}

/// RFC 5322 `atext`.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~-".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_addresses_are_normalised() {
        let cases = [
            ("alice@example.com", "alice@example.com"),
            ("  Alice.Smith@Example.COM \n", "alice.smith@example.com"),
            (
                "BOB+Trustmesh@Mail.Example.org",
                "bob+trustmesh@mail.example.org",
            ),
            (
                "o'brien@sub-domain.example.co.uk",
                "o'brien@sub-domain.example.co.uk",
            ),
            ("x@a.io", "x@a.io"),
            (
                "user_1!#$%&'*/=?^`{|}~-@xn--bcher-kva.example",
                "user_1!#$%&'*/=?^`{|}~-@xn--bcher-kva.example",
            ),
            ("a@1.example", "a@1.example"),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize(input).as_deref(), Ok(expected), "{input:?}");
        }
    }

    #[test]
    fn case_folding_makes_addresses_equal() {
        assert_eq!(
            normalize("Alice@Example.com"),
            normalize("aLICE@eXAMPLE.COM")
        );
    }

    #[test]
    fn invalid_addresses_say_which_rule_failed() {
        let local64 = "a".repeat(64);
        let local65 = "a".repeat(65);
        let label63 = "b".repeat(63);
        let label64 = "b".repeat(64);
        let long = format!("{local64}@{label63}.{label63}.{}.com", "c".repeat(58));
        assert_eq!(long.len(), 255);
        let cases: Vec<(String, EmailError)> = vec![
            ("".into(), EmailError::Empty),
            ("   ".into(), EmailError::Empty),
            ("alice".into(), EmailError::MissingAt),
            ("alice.example.com".into(), EmailError::MissingAt),
            ("a@b@example.com".into(), EmailError::MultipleAt),
            ("\"a@b\"@example.com".into(), EmailError::MultipleAt),
            ("@example.com".into(), EmailError::LocalEmpty),
            (format!("{local65}@example.com"), EmailError::LocalTooLong),
            (
                "al ice@example.com".into(),
                EmailError::LocalInvalidChar(' '),
            ),
            (
                "\"alice\"@example.com".into(),
                EmailError::LocalInvalidChar('"'),
            ),
            (
                "ali(ce)@example.com".into(),
                EmailError::LocalInvalidChar('('),
            ),
            (
                "alice,bob@example.com".into(),
                EmailError::LocalInvalidChar(','),
            ),
            (".alice@example.com".into(), EmailError::LocalDots),
            ("alice.@example.com".into(), EmailError::LocalDots),
            ("al..ice@example.com".into(), EmailError::LocalDots),
            ("alice@".into(), EmailError::DomainEmpty),
            (
                "alice@exa_mple.com".into(),
                EmailError::DomainInvalidChar('_'),
            ),
            (
                "alice@[127.0.0.1]".into(),
                EmailError::DomainInvalidChar('['),
            ),
            ("alice@example.com.".into(), EmailError::DomainEmptyLabel),
            ("alice@.example.com".into(), EmailError::DomainEmptyLabel),
            ("alice@example..com".into(), EmailError::DomainEmptyLabel),
            (
                format!("alice@{label64}.com"),
                EmailError::DomainLabelTooLong,
            ),
            ("alice@-example.com".into(), EmailError::DomainLabelHyphen),
            ("alice@example-.com".into(), EmailError::DomainLabelHyphen),
            ("alice@localhost".into(), EmailError::DomainSingleLabel),
            ("alice@127.0.0.1".into(), EmailError::DomainNumericTld),
            ("alicé@example.com".into(), EmailError::NonAscii),
            ("alice@bücher.example".into(), EmailError::NonAscii),
            (long, EmailError::TooLong),
        ];
        for (input, expected) in cases {
            let err = normalize(&input).expect_err(&input);
            assert_eq!(err, expected, "{input:?}: {err}");
            assert!(err.code().starts_with("email_"));
        }
    }

    #[test]
    fn limits_are_inclusive() {
        let local64 = "a".repeat(64);
        let label63 = "b".repeat(63);
        let exactly = format!("{local64}@{label63}.{label63}.{}.com", "c".repeat(57));
        assert_eq!(exactly.len(), MAX_LEN);
        assert_eq!(normalize(&exactly).as_deref(), Ok(exactly.as_str()));
    }

    #[test]
    fn messages_name_the_rule() {
        assert!(
            EmailError::LocalInvalidChar(' ')
                .to_string()
                .contains("' '")
        );
        assert!(EmailError::TooLong.to_string().contains("254"));
        assert_eq!(
            EmailError::DomainSingleLabel.code(),
            "email_domain_single_label"
        );
    }

    #[test]
    fn local_part_of_an_address() {
        assert_eq!(local_part("alice@example.com"), "alice");
        assert_eq!(local_part("no-at"), "no-at");
    }
}
