//! TOTP (RFC 6238): enrolment and verification.
//!
//! Parameters are the ones every authenticator app supports: HMAC-SHA1,
//! 6 digits, 30-second steps, a 20-byte (160-bit) random secret. A code is
//! accepted for the current step and one step either side; a step at or
//! before the last one used is refused (replay), so each code works once.
//!
//! The secret is returned once, at enrolment, inside the `otpauth://` URI and
//! its QR code; store [`Enrollment::secret_bytes`] sealed (`trustmesh-keyring`)
//! together with the last used step.

use std::fmt;

use data_encoding::BASE32_NOPAD;
use qrcode::render::svg;
use qrcode::{EcLevel, QrCode};
use rand::RngCore;
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, TOTP};
use zeroize::Zeroizing;

/// The issuer shown in authenticator apps.
pub const ISSUER: &str = "Trustmesh";
/// Digits per code.
pub const DIGITS: usize = 6;
/// Seconds per time step.
pub const STEP_SECS: u64 = 30;
/// Steps accepted on either side of the current one.
pub const SKEW_STEPS: u64 = 1;
/// Length of a new secret in bytes (160 bits, as RFC 4226 recommends).
pub const SECRET_LEN: usize = 20;
/// Shortest secret [`verify`] accepts (128 bits, RFC 4226's minimum).
pub const MIN_SECRET_LEN: usize = 16;

/// Why a TOTP operation failed. [`TotpError::code`] is stable for API clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TotpError {
    /// The input is not 6 digits.
    #[error("the code must be exactly {DIGITS} digits")]
    Malformed,
    /// No step in the window has this code.
    #[error("the code is wrong or has expired")]
    Invalid,
    /// The code belongs to a step already used.
    #[error("the code has already been used; wait for the next one")]
    Replayed,
    /// The stored secret is shorter than [`MIN_SECRET_LEN`].
    #[error("the TOTP secret is shorter than {MIN_SECRET_LEN} bytes")]
    WeakSecret,
    /// The account name or issuer cannot be put in an `otpauth://` label.
    #[error("the account name and issuer must be non-empty and must not contain ':'")]
    BadLabel,
    /// The URI does not fit in a QR code.
    #[error("the enrolment URI does not fit in a QR code")]
    QrTooLong,
}

impl TotpError {
    /// A stable machine-readable code (`totp_…`).
    pub fn code(&self) -> &'static str {
        match self {
            TotpError::Malformed => "totp_malformed",
            TotpError::Invalid => "totp_invalid",
            TotpError::Replayed => "totp_replayed",
            TotpError::WeakSecret => "totp_weak_secret",
            TotpError::BadLabel => "totp_bad_label",
            TotpError::QrTooLong => "totp_qr_too_long",
        }
    }
}

/// A new TOTP enrolment: the secret to store (sealed) and what to show once.
pub struct Enrollment {
    /// The 20 random secret bytes (zeroed when dropped).
    pub secret_bytes: Zeroizing<Vec<u8>>,
    /// `otpauth://totp/Trustmesh:alice@example.com?secret=…&issuer=Trustmesh&algorithm=SHA1&digits=6&period=30`.
    pub otpauth_uri: String,
    /// The URI as a QR code, an SVG document.
    pub qr_svg: String,
}

impl fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Enrollment").finish_non_exhaustive()
    }
}

impl Enrollment {
    /// A fresh secret for `account_email` (normally the normalised email),
    /// with the issuer [`ISSUER`].
    pub fn new(account_email: &str) -> Result<Self, TotpError> {
        Self::with_issuer(account_email, ISSUER)
    }

    /// A fresh secret for `account` under another issuer name.
    pub fn with_issuer(account: &str, issuer: &str) -> Result<Self, TotpError> {
        let mut secret = Zeroizing::new(vec![0u8; SECRET_LEN]);
        rand::rng().fill_bytes(&mut secret);
        let otpauth_uri = otpauth_uri(&secret, account, issuer)?;
        let qr_svg = qr_svg(&otpauth_uri)?;
        Ok(Enrollment {
            secret_bytes: secret,
            otpauth_uri,
            qr_svg,
        })
    }

    /// The secret in base32 (no padding), for typing it into an app by hand.
    pub fn secret_base32(&self) -> Zeroizing<String> {
        Zeroizing::new(BASE32_NOPAD.encode(&self.secret_bytes))
    }
}

/// The Key URI (`otpauth://totp/…`) that authenticator apps import, with every
/// parameter written out.
pub fn otpauth_uri(secret: &[u8], account: &str, issuer: &str) -> Result<String, TotpError> {
    if account.is_empty() || issuer.is_empty() || account.contains(':') || issuer.contains(':') {
        return Err(TotpError::BadLabel);
    }
    let issuer = percent_encode(issuer, false);
    Ok(format!(
        "otpauth://totp/{issuer}:{account}?secret={secret}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        account = percent_encode(account, true),
        secret = BASE32_NOPAD.encode(secret),
    ))
}

/// `data` as a QR code (error correction M), an SVG document.
pub fn qr_svg(data: &str) -> Result<String, TotpError> {
    let code = QrCode::with_error_correction_level(data.as_bytes(), EcLevel::M)
        .map_err(|_| TotpError::QrTooLong)?;
    Ok(code
        .render::<svg::Color<'_>>()
        .min_dimensions(256, 256)
        .quiet_zone(true)
        .build())
}

/// The time step of a Unix time.
pub fn step_at(unix: u64) -> u64 {
    unix / STEP_SECS
}

/// The code for `secret` at Unix time `unix` (what an authenticator app shows).
pub fn code_at(secret: &[u8], unix: u64) -> Result<String, TotpError> {
    Ok(totp_for(secret)?.generate(unix))
}

/// Verifies `code` against `secret` at `now_unix`.
///
/// Accepts the current step and [`SKEW_STEPS`] on either side; returns the
/// matched step, which the caller stores as the new `last_used_step`. A step at
/// or before `last_used_step` is refused as a replay. Input: 6 ASCII digits;
/// surrounding whitespace and spaces inside (`"123 456"`) are ignored. Every
/// candidate is computed and compared in constant time.
pub fn verify(
    secret: &[u8],
    code: &str,
    now_unix: u64,
    last_used_step: Option<u64>,
) -> Result<u64, TotpError> {
    let code = normalize_code(code)?;
    let totp = totp_for(secret)?;
    let current = step_at(now_unix);
    let first = current.saturating_sub(SKEW_STEPS);
    let last = current.saturating_add(SKEW_STEPS);
    let mut fresh_match: Option<u64> = None;
    let mut replayed_match = false;
    for step in first..=last {
        let Some(at) = step.checked_mul(STEP_SECS) else {
            continue;
        };
        let expected = totp.generate(at);
        let matches: bool = expected.as_bytes().ct_eq(code.as_bytes()).into();
        let is_fresh = last_used_step.is_none_or(|used| step > used);
        if matches && is_fresh {
            fresh_match = Some(step);
        } else if matches {
            replayed_match = true;
        }
    }
    match fresh_match {
        Some(step) => Ok(step),
        None if replayed_match => Err(TotpError::Replayed),
        None => Err(TotpError::Invalid),
    }
}

/// Strips whitespace and checks for exactly [`DIGITS`] ASCII digits.
fn normalize_code(code: &str) -> Result<Zeroizing<String>, TotpError> {
    let digits: Zeroizing<String> =
        Zeroizing::new(code.chars().filter(|c| !c.is_whitespace()).collect());
    if digits.len() != DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TotpError::Malformed);
    }
    Ok(digits)
}

fn totp_for(secret: &[u8]) -> Result<TOTP, TotpError> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(TotpError::WeakSecret);
    }
    Ok(TOTP::new_unchecked(
        Algorithm::SHA1,
        DIGITS,
        // The skew is applied by `verify` itself.
        0,
        STEP_SECS,
        secret.to_vec(),
        None,
        String::new(),
    ))
}

/// Percent-encodes everything but RFC 3986 unreserved characters (and `@` in
/// the label, as the Key URI format's examples write it).
fn percent_encode(text: &str, keep_at: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        let keep = byte.is_ascii_alphanumeric()
            || matches!(byte, b'-' | b'.' | b'_' | b'~')
            || (keep_at && byte == b'@');
        if keep {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
