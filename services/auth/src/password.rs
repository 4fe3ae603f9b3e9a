//! Passwords: the registration policy and Argon2id hashing.
//!
//! Policy ([`check_policy`]): 12 to 128 characters (Unicode scalar values), not
//! in the bundled list of the 100,000 most common breached passwords (compared
//! case-insensitively), and not containing the email's local part
//! (case-insensitively, when it is at least 3 characters long).
//!
//! Hashing ([`Hasher`]): Argon2id, version 0x13, with the OWASP parameters or
//! stronger (m = 19456 KiB, t = 2, p = 1 at least), a 16-byte random salt and a
//! 32-byte output, written as a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`)
//! so that the parameters travel with the hash. [`Hasher::verify`] says when a
//! stored hash was made with weaker parameters than the current ones, so that
//! the caller re-hashes the password at that login.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::sync::LazyLock;

use argon2::password_hash::{self, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;

/// Shortest accepted password, in Unicode scalar values.
pub const MIN_LEN: usize = 12;
/// Longest accepted password, in Unicode scalar values.
pub const MAX_LEN: usize = 128;
/// Shortest local part that a password must not contain.
pub const MIN_EMAIL_LOCAL_LEN: usize = 3;

/// The bundled breached-password list (see `data/README.md`).
static BREACHED_LIST: &str = include_str!("../data/common-passwords-100k.txt");

/// The list, lowercased, built on first use.
static BREACHED: LazyLock<HashSet<Cow<'static, str>>> = LazyLock::new(|| {
    BREACHED_LIST
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let lower = line.to_lowercase();
            if lower == line {
                Cow::Borrowed(line)
            } else {
                Cow::Owned(lower)
            }
        })
        .collect()
});

/// The password rule that failed. [`PasswordRule::code`] is stable for API
/// clients; the message says what to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PasswordRule {
    /// Fewer than [`MIN_LEN`] characters.
    #[error("the password must be at least {MIN_LEN} characters long")]
    TooShort,
    /// More than [`MAX_LEN`] characters.
    #[error("the password must be at most {MAX_LEN} characters long")]
    TooLong,
    /// In the list of common breached passwords.
    #[error(
        "the password is one of the most common passwords found in data breaches; choose another"
    )]
    Breached,
    /// Contains the email's local part.
    #[error("the password must not contain the name part of your email address")]
    ContainsEmail,
}

impl PasswordRule {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            PasswordRule::TooShort => "password_too_short",
            PasswordRule::TooLong => "password_too_long",
            PasswordRule::Breached => "password_breached",
            PasswordRule::ContainsEmail => "password_contains_email",
        }
    }
}

/// Checks a new password against the policy, in this order: length, email
/// local part, breached list. `email` is the account's address (normalised or
/// not); a `+tag` is ignored as well (`alice+tm@…` also refuses "alice").
pub fn check_policy(password: &str, email: &str) -> Result<(), PasswordRule> {
    let len = password.chars().count();
    if len < MIN_LEN {
        return Err(PasswordRule::TooShort);
    }
    if len > MAX_LEN {
        return Err(PasswordRule::TooLong);
    }
    let lower = password.to_lowercase();
    let local = crate::email::local_part(email.trim()).to_lowercase();
    let base = local
        .split_once('+')
        .map_or(local.as_str(), |(base, _)| base);
    for part in [local.as_str(), base] {
        if part.chars().count() >= MIN_EMAIL_LOCAL_LEN && lower.contains(part) {
            return Err(PasswordRule::ContainsEmail);
        }
    }
    if BREACHED.contains(lower.as_str()) {
        return Err(PasswordRule::Breached);
    }
    Ok(())
}

/// Whether `password` is in the bundled breached list (case-insensitively).
pub fn is_breached(password: &str) -> bool {
    BREACHED.contains(password.to_lowercase().as_str())
}

/// Builds the breached-password set now rather than at the first registration
/// (call it at start-up); returns the number of distinct entries.
pub fn warm_up() -> usize {
    BREACHED.len()
}

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashParams {
    /// Memory in KiB (`m`).
    pub m_cost_kib: u32,
    /// Iterations (`t`).
    pub t_cost: u32,
    /// Parallelism (`p`).
    pub p_cost: u32,
}

impl HashParams {
    /// The OWASP minimum for Argon2id: m = 19456 KiB (19 MiB), t = 2, p = 1.
    pub const OWASP_MIN: HashParams = HashParams {
        m_cost_kib: 19_456,
        t_cost: 2,
        p_cost: 1,
    };

    /// Whether each parameter is at least the OWASP minimum.
    pub fn meets_owasp_minimum(&self) -> bool {
        self.m_cost_kib >= Self::OWASP_MIN.m_cost_kib
            && self.t_cost >= Self::OWASP_MIN.t_cost
            && self.p_cost >= Self::OWASP_MIN.p_cost
    }
}

impl Default for HashParams {
    fn default() -> Self {
        Self::OWASP_MIN
    }
}

impl fmt::Display for HashParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "m={},t={},p={}",
            self.m_cost_kib, self.t_cost, self.p_cost
        )
    }
}

/// Errors of password hashing (never "wrong password": see [`Verified`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HashError {
    /// The configured parameters are below the OWASP minimum.
    #[error("Argon2id parameters {0} are below the OWASP minimum (m=19456,t=2,p=1)")]
    WeakParams(HashParams),
    /// The configured parameters are invalid for Argon2.
    #[error("invalid Argon2 parameters: {0}")]
    InvalidParams(argon2::Error),
    /// The stored hash is not a PHC string this hasher understands.
    #[error("stored password hash is unusable: {0}")]
    BadStoredHash(password_hash::Error),
    /// Hashing failed.
    #[error("password hashing failed: {0}")]
    Hashing(password_hash::Error),
}

/// The outcome of [`Hasher::verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Verified {
    /// The password matches the stored hash.
    pub ok: bool,
    /// The stored hash uses another algorithm or version, or weaker parameters
    /// than the current ones: store [`Hasher::hash`] of the password (when `ok`).
    pub needs_rehash: bool,
}

/// Hashes and verifies passwords with Argon2id; cheap to share (`Send + Sync`,
/// `Clone`). Run it off async threads (`spawn_blocking`): a hash takes ~15 ms.
#[derive(Clone)]
pub struct Hasher {
    argon2: Argon2<'static>,
    params: HashParams,
    /// A hash of a fixed password with the current parameters, for
    /// [`Hasher::dummy_verify`].
    dummy: String,
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hasher")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

/// Length of the random salt in bytes.
const SALT_LEN: usize = 16;
/// Length of the Argon2 output in bytes.
const OUTPUT_LEN: usize = 32;

impl Hasher {
    /// A hasher with `params`, refused below the OWASP minimum. Takes one hash
    /// time (it prepares the dummy hash for [`Hasher::dummy_verify`]).
    pub fn new(params: HashParams) -> Result<Self, HashError> {
        if !params.meets_owasp_minimum() {
            return Err(HashError::WeakParams(params));
        }
        let argon2_params = Params::new(
            params.m_cost_kib,
            params.t_cost,
            params.p_cost,
            Some(OUTPUT_LEN),
        )
        .map_err(HashError::InvalidParams)?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, argon2_params);
        let mut hasher = Hasher {
            argon2,
            params,
            dummy: String::new(),
        };
        hasher.dummy = hasher.hash("trustmesh dummy password for unknown accounts")?;
        Ok(hasher)
    }

    /// The current parameters.
    pub fn params(&self) -> HashParams {
        self.params
    }

    /// Hashes `password` with a fresh random salt; returns the PHC string.
    pub fn hash(&self, password: &str) -> Result<String, HashError> {
        let mut salt = [0u8; SALT_LEN];
        rand::rng().fill_bytes(&mut salt);
        let salt = SaltString::encode_b64(&salt).map_err(HashError::Hashing)?;
        let hash = self
            .argon2
            .hash_password(password.as_bytes(), &salt)
            .map_err(HashError::Hashing)?;
        Ok(hash.to_string())
    }

    /// Verifies `password` against a stored PHC string, with the parameters
    /// stored in it (argon2 compares in constant time). A wrong password is
    /// `Ok(Verified { ok: false, .. })`; an error means the stored hash itself is
    /// unusable.
    pub fn verify(&self, password: &str, phc: &str) -> Result<Verified, HashError> {
        let parsed = PasswordHash::new(phc).map_err(HashError::BadStoredHash)?;
        let needs_rehash = self.is_weaker(&parsed);
        match self.argon2.verify_password(password.as_bytes(), &parsed) {
            Ok(()) => Ok(Verified {
                ok: true,
                needs_rehash,
            }),
            Err(password_hash::Error::Password) => Ok(Verified {
                ok: false,
                needs_rehash,
            }),
            Err(e) => Err(HashError::BadStoredHash(e)),
        }
    }

    /// Spends the time of a [`Hasher::verify`] against a hash with the current
    /// parameters, and ignores the result: call it when the account does not
    /// exist, so that an unknown email answers like a wrong password.
    pub fn dummy_verify(&self, password: &str) {
        let _ = self.verify(password, &self.dummy);
    }

    /// Whether a stored hash is weaker than what [`Hasher::hash`] makes now.
    fn is_weaker(&self, stored: &PasswordHash<'_>) -> bool {
        if stored.algorithm != Algorithm::Argon2id.ident()
            || stored.version != Some(Version::V0x13.into())
        {
            return true;
        }
        let Ok(params) = Params::try_from(stored) else {
            return true;
        };
        params.m_cost() < self.params.m_cost_kib
            || params.t_cost() < self.params.t_cost
            || params.p_cost() < self.params.p_cost
            || stored.hash.is_none_or(|h| h.len() < OUTPUT_LEN)
            || stored.salt.is_none_or(|s| s.len() < 22) // 16 bytes in unpadded base64
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn length_rules_count_unicode_scalar_values() {
        let email = "someone@example.com";
        assert_eq!(
            check_policy("Tr0ub4dor&3", email),
            Err(PasswordRule::TooShort)
        );
        assert_eq!(check_policy("", email), Err(PasswordRule::TooShort));
        assert_eq!(check_policy("Tr0ub4dor&3x", email), Ok(()));
        // 11 characters but 22 bytes: still too short.
        assert_eq!(
            check_policy("ééééééééééé", email),
            Err(PasswordRule::TooShort)
        );
        assert_eq!(check_policy("éééééééééééé", email), Ok(()));
        assert_eq!(check_policy(&"ç".repeat(128), email), Ok(()));
        assert_eq!(
            check_policy(&"ç".repeat(129), email),
            Err(PasswordRule::TooLong)
        );
        assert_eq!(
            check_policy(&"x7".repeat(65), email),
            Err(PasswordRule::TooLong)
        );
    }

    #[test]
    fn breached_passwords_are_refused_case_insensitively() {
        // Entries of the bundled list that are long enough to pass the length rule.
        for entry in [
            "password1234",
            "qwerty123456",
            "1qaz2wsx3edc",
            "iloveyou1234",
            "123456789012",
        ] {
            assert!(
                BREACHED_LIST.lines().any(|l| l == entry),
                "{entry} not in the list"
            );
            assert_eq!(
                check_policy(entry, "zed@example.com"),
                Err(PasswordRule::Breached),
                "{entry}"
            );
        }
        assert_eq!(
            check_policy("PassWord1234", "zed@example.com"),
            Err(PasswordRule::Breached)
        );
        // Stored in mixed case in the list ("Telechargement"), refused in any case.
        assert!(BREACHED_LIST.lines().any(|l| l == "Telechargement"));
        assert_eq!(
            check_policy("TELECHARGEMENT", "zed@example.com"),
            Err(PasswordRule::Breached)
        );
        assert!(!is_breached("correct horse battery staple"));
        // 99,933 non-empty lines, 97,762 distinct once lowercased.
        assert!(warm_up() > 97_000, "{}", warm_up());
    }

    #[test]
    fn password_containing_the_email_local_part_is_refused() {
        assert_eq!(
            check_policy("my-Alice-is-strong!", "alice@example.com"),
            Err(PasswordRule::ContainsEmail)
        );
        assert_eq!(
            check_policy("xxALICE.SMITHxx99", "Alice.Smith@Example.com"),
            Err(PasswordRule::ContainsEmail)
        );
        // A +tag does not hide the name.
        assert_eq!(
            check_policy("alice-rocks-2026", "alice+trustmesh@example.com"),
            Err(PasswordRule::ContainsEmail)
        );
        // Local parts shorter than 3 characters are not checked.
        assert_eq!(check_policy("abcdefghijklmnop", "ab@example.com"), Ok(()));
        assert_eq!(
            check_policy("abcdefghijklmnop", "abc@example.com"),
            Err(PasswordRule::ContainsEmail)
        );
        // The domain is not the local part.
        assert_eq!(
            check_policy("example-is-my-word", "zed@example.com"),
            Ok(())
        );
    }

    #[test]
    fn codes_and_messages_are_stable() {
        assert_eq!(PasswordRule::TooShort.code(), "password_too_short");
        assert_eq!(PasswordRule::TooLong.code(), "password_too_long");
        assert_eq!(PasswordRule::Breached.code(), "password_breached");
        assert_eq!(
            PasswordRule::ContainsEmail.code(),
            "password_contains_email"
        );
        assert!(PasswordRule::TooShort.to_string().contains("12"));
        assert!(PasswordRule::TooLong.to_string().contains("128"));
    }

    #[test]
    fn hash_and_verify() {
        let hasher = Hasher::new(HashParams::default()).unwrap();
        let phc = hasher.hash("correct horse battery staple").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert_eq!(
            hasher.verify("correct horse battery staple", &phc).unwrap(),
            Verified {
                ok: true,
                needs_rehash: false
            }
        );
        assert_eq!(
            hasher
                .verify("correct horse battery stapler", &phc)
                .unwrap(),
            Verified {
                ok: false,
                needs_rehash: false
            }
        );
        assert!(!hasher.verify("", &phc).unwrap().ok);
        // A fresh salt every time.
        assert_ne!(phc, hasher.hash("correct horse battery staple").unwrap());
        // Garbage in the database is an error, not a "wrong password".
        assert!(matches!(
            hasher.verify("x", "not a phc string"),
            Err(HashError::BadStoredHash(_))
        ));
        assert!(
            hasher
                .verify("x", "$scrypt$ln=15,r=8,p=1$c2FsdA$aGFzaA")
                .is_err()
        );
    }

    #[test]
    fn phc_string_carries_custom_params() {
        let params = HashParams {
            m_cost_kib: 20_480,
            t_cost: 3,
            p_cost: 1,
        };
        let hasher = Hasher::new(params).unwrap();
        let phc = hasher.hash("another long password").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=20480,t=3,p=1$"), "{phc}");
        // Verification uses the stored parameters, whatever the current ones.
        let default = Hasher::new(HashParams::default()).unwrap();
        assert_eq!(
            default.verify("another long password", &phc).unwrap(),
            Verified {
                ok: true,
                needs_rehash: false
            }
        );
    }

    #[test]
    fn weaker_stored_hashes_need_a_rehash() {
        let hasher = Hasher::new(HashParams::default()).unwrap();
        let weak = |algorithm, m, t, p| {
            let params = Params::new(m, t, p, Some(32)).unwrap();
            let salt = SaltString::encode_b64(&[7u8; 16]).unwrap();
            Argon2::new(algorithm, Version::V0x13, params)
                .hash_password(b"old password here", &salt)
                .unwrap()
                .to_string()
        };
        for (phc, why) in [
            (weak(Algorithm::Argon2id, 4096, 3, 1), "memory"),
            (weak(Algorithm::Argon2id, 19_456, 1, 1), "iterations"),
            (weak(Algorithm::Argon2i, 19_456, 2, 1), "algorithm"),
            (weak(Algorithm::Argon2d, 65_536, 3, 1), "algorithm"),
        ] {
            let verified = hasher.verify("old password here", &phc).unwrap();
            assert_eq!(
                verified,
                Verified {
                    ok: true,
                    needs_rehash: true
                },
                "{why}: {phc}"
            );
            assert!(
                !hasher.verify("wrong password here", &phc).unwrap().ok,
                "{why}"
            );
        }
        // Stronger stored parameters do not need a rehash.
        let strong = weak(Algorithm::Argon2id, 32_768, 3, 2);
        assert_eq!(
            hasher.verify("old password here", &strong).unwrap(),
            Verified {
                ok: true,
                needs_rehash: false
            }
        );
        // After raising the parameters, today's default hashes need a rehash.
        let raised = Hasher::new(HashParams {
            m_cost_kib: 19_456,
            t_cost: 3,
            p_cost: 1,
        })
        .unwrap();
        let today = hasher.hash("old password here").unwrap();
        assert_eq!(
            raised.verify("old password here", &today).unwrap(),
            Verified {
                ok: true,
                needs_rehash: true
            }
        );
    }

    #[test]
    fn hasher_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Hasher>();
    }

    #[test]
    fn weak_configuration_is_refused() {
        for params in [
            HashParams {
                m_cost_kib: 19_455,
                t_cost: 2,
                p_cost: 1,
            },
            HashParams {
                m_cost_kib: 19_456,
                t_cost: 1,
                p_cost: 1,
            },
            HashParams {
                m_cost_kib: 19_456,
                t_cost: 2,
                p_cost: 0,
            },
        ] {
            assert!(matches!(Hasher::new(params), Err(HashError::WeakParams(p)) if p == params));
        }
    }

    #[test]
    fn dummy_verify_takes_about_as_long_as_a_real_one() {
        let hasher = Hasher::new(HashParams::default()).unwrap();
        let phc = hasher.hash("a real user's password").unwrap();
        // Interleaved runs, compared by their fastest: other tests share the cores.
        let (mut real, mut dummy) = (std::time::Duration::MAX, std::time::Duration::MAX);
        for _ in 0..6 {
            let start = std::time::Instant::now();
            let verified = hasher.verify("wrong guess", &phc).unwrap();
            real = real.min(start.elapsed());
            assert!(!verified.ok);
            let start = std::time::Instant::now();
            hasher.dummy_verify("wrong guess");
            dummy = dummy.min(start.elapsed());
        }
        let ratio = dummy.as_secs_f64() / real.as_secs_f64();
        assert!(
            (0.7..1.4).contains(&ratio),
            "dummy {dummy:?} vs real {real:?}"
        );
    }
}
