//! Tests of TOTP enrolment and verification.

#![allow(clippy::unwrap_used)]

use super::*;

/// RFC 6238 appendix B's SHA1 seed.
const RFC_SECRET: &[u8] = b"12345678901234567890";

#[test]
fn rfc6238_known_answers() {
    // Appendix B lists 8-digit codes; the 6-digit codes are their last six digits.
    for (time, code) in [
        (59, "287082"),
        (1_111_111_109, "081804"),
        (1_111_111_111, "050471"),
        (1_234_567_890, "005924"),
        (2_000_000_000, "279037"),
        (20_000_000_000, "353130"),
    ] {
        assert_eq!(code_at(RFC_SECRET, time).unwrap(), code, "t={time}");
        assert_eq!(
            verify(RFC_SECRET, code, time, None),
            Ok(step_at(time)),
            "t={time}"
        );
    }
}

#[test]
fn code_for_now_and_one_step_either_side_verify() {
    let secret = Enrollment::new("alice@example.com").unwrap().secret_bytes;
    let now = 1_767_225_615; // mid-step
    let step = step_at(now);
    assert_eq!(
        verify(&secret, &code_at(&secret, now).unwrap(), now, None),
        Ok(step)
    );
    let previous = code_at(&secret, now - 30).unwrap();
    assert_eq!(verify(&secret, &previous, now, None), Ok(step - 1));
    let next = code_at(&secret, now + 30).unwrap();
    assert_eq!(verify(&secret, &next, now, None), Ok(step + 1));
}

#[test]
fn two_steps_away_is_refused() {
    let secret = Enrollment::new("alice@example.com").unwrap().secret_bytes;
    let now: u64 = 1_767_225_615;
    for offset in [-90i64, -60, 60, 90] {
        let at = now.checked_add_signed(offset).unwrap();
        let code = code_at(&secret, at).unwrap();
        // Skip the one-in-a-million chance that the code also belongs to the window.
        let in_window = (-1i64..=1)
            .any(|k| code_at(&secret, now.checked_add_signed(30 * k).unwrap()).unwrap() == code);
        if !in_window {
            assert_eq!(
                verify(&secret, &code, now, None),
                Err(TotpError::Invalid),
                "{offset}"
            );
        }
    }
}

#[test]
fn a_used_step_cannot_be_replayed() {
    let secret = RFC_SECRET;
    let now = 1_111_111_111;
    let code = code_at(secret, now).unwrap();
    let step = verify(secret, &code, now, None).unwrap();
    // Same code again, same time or 20 s later: replay.
    assert_eq!(
        verify(secret, &code, now, Some(step)),
        Err(TotpError::Replayed)
    );
    assert_eq!(
        verify(secret, &code, now + 20, Some(step)),
        Err(TotpError::Replayed)
    );
    // The previous step's code is also refused once a later step was used.
    let previous = code_at(secret, now - 30).unwrap();
    assert_eq!(
        verify(secret, &previous, now, Some(step)),
        Err(TotpError::Replayed)
    );
    // The next step's code is still good.
    let next = code_at(secret, now + 30).unwrap();
    assert_eq!(verify(secret, &next, now, Some(step)), Ok(step + 1));
    // A last used step before the window does not get in the way.
    assert_eq!(verify(secret, &code, now, Some(step - 5)), Ok(step));
}

#[test]
fn wrong_codes_are_refused() {
    let now = 1_111_111_111;
    let right = code_at(RFC_SECRET, now).unwrap();
    let wrong = format!("{:06}", (right.parse::<u32>().unwrap() + 1) % 1_000_000);
    assert_eq!(
        verify(RFC_SECRET, &wrong, now, None),
        Err(TotpError::Invalid)
    );
    assert_eq!(
        verify(RFC_SECRET, "000000", now, None),
        Err(TotpError::Invalid)
    );
    // Another secret's code.
    let other = [9u8; 20];
    assert_eq!(
        verify(&other, &right, now, None).unwrap_err(),
        TotpError::Invalid,
        "(fails only if the two secrets collide on this code)"
    );
}

#[test]
fn input_must_be_six_digits() {
    let now = 1_111_111_111; // code 050471
    for bad in [
        "",
        "05047",
        "0504711",
        "05047a",
        "O50471",
        "+50471",
        "-50471",
        "050471.",
        "٠٥٠٤٧١",
        "０５０４７１",
    ] {
        assert_eq!(
            verify(RFC_SECRET, bad, now, None),
            Err(TotpError::Malformed),
            "{bad:?}"
        );
    }
    for ok in ["050471", " 050471 ", "050 471", "050471\n"] {
        assert!(verify(RFC_SECRET, ok, now, None).is_ok(), "{ok:?}");
    }
}

#[test]
fn short_secrets_are_refused() {
    assert_eq!(
        verify(&[1u8; 15], "123456", 0, None),
        Err(TotpError::WeakSecret)
    );
    assert_eq!(code_at(&[], 0), Err(TotpError::WeakSecret));
}

#[test]
fn early_and_late_times_do_not_overflow() {
    let code = code_at(RFC_SECRET, 0).unwrap();
    assert_eq!(verify(RFC_SECRET, &code, 0, None), Ok(0));
    let _ = verify(RFC_SECRET, "123456", u64::MAX, None);
}

#[test]
fn otpauth_uri_format() {
    let uri = otpauth_uri(RFC_SECRET, "alice@example.com", ISSUER).unwrap();
    assert_eq!(
        uri,
        "otpauth://totp/Trustmesh:alice@example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
         &issuer=Trustmesh&algorithm=SHA1&digits=6&period=30"
    );
    // Characters an email may hold are escaped, and a standard parser reads them back.
    let uri = otpauth_uri(RFC_SECRET, "bob+2fa/x&y=z@example.com", "Trust Mesh").unwrap();
    assert!(
        uri.starts_with("otpauth://totp/Trust%20Mesh:bob%2B2fa%2Fx%26y%3Dz@example.com?"),
        "{uri}"
    );
    let parsed = TOTP::from_url(&uri).unwrap();
    assert_eq!(parsed.account_name, "bob+2fa/x&y=z@example.com");
    assert_eq!(parsed.issuer.as_deref(), Some("Trust Mesh"));
    assert_eq!(parsed.secret, RFC_SECRET);
    // ':' cannot appear in a label; empty names are refused too.
    assert_eq!(
        otpauth_uri(RFC_SECRET, "a:b@example.com", ISSUER),
        Err(TotpError::BadLabel)
    );
    assert_eq!(
        otpauth_uri(RFC_SECRET, "a@example.com", "Trust:mesh"),
        Err(TotpError::BadLabel)
    );
    assert_eq!(
        otpauth_uri(RFC_SECRET, "", ISSUER),
        Err(TotpError::BadLabel)
    );
}

#[test]
fn enrollment_gives_a_fresh_secret_uri_and_qr() {
    let a = Enrollment::new("alice@example.com").unwrap();
    let b = Enrollment::new("alice@example.com").unwrap();
    assert_eq!(a.secret_bytes.len(), SECRET_LEN);
    assert_ne!(a.secret_bytes, b.secret_bytes);
    let secret = a.secret_base32();
    assert_eq!(
        a.otpauth_uri,
        format!(
            "otpauth://totp/Trustmesh:alice@example.com?secret={}&issuer=Trustmesh&algorithm=SHA1&digits=6&period=30",
            &*secret
        )
    );

    // totp-rs's own parser (what an app does) gets the same secret and parameters,
    // and computes the codes we accept.
    let parsed = TOTP::from_url(&a.otpauth_uri).unwrap();
    assert_eq!(parsed.secret, &a.secret_bytes[..]);
    assert_eq!(
        (parsed.digits, parsed.step, parsed.algorithm),
        (6, 30, Algorithm::SHA1)
    );
    assert_eq!(parsed.issuer.as_deref(), Some("Trustmesh"));
    assert_eq!(parsed.account_name, "alice@example.com");
    let now = 1_767_225_615;
    assert_eq!(
        verify(&a.secret_bytes, &parsed.generate(now), now, None),
        Ok(step_at(now))
    );

    // The QR code is an SVG that decodes back to the URI.
    assert!(a.qr_svg.starts_with("<?xml"), "{}", &a.qr_svg[..40]);
    assert!(a.qr_svg.contains("<svg") && a.qr_svg.ends_with("</svg>"));
    assert_eq!(decode_qr_svg(&a.qr_svg), a.otpauth_uri);

    // Debug output does not leak the secret.
    assert_eq!(format!("{a:?}"), "Enrollment { .. }");
}

#[test]
fn error_codes_are_stable() {
    assert_eq!(TotpError::Malformed.code(), "totp_malformed");
    assert_eq!(TotpError::Invalid.code(), "totp_invalid");
    assert_eq!(TotpError::Replayed.code(), "totp_replayed");
}

/// Rasterises the SVG written by `qrcode` (one path of `M x y h w v h H x V y`
/// rectangles on a white background) and decodes it with `rqrr`.
fn decode_qr_svg(svg: &str) -> String {
    let attr = |name: &str| -> usize {
        let start = svg.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
        let end = start + svg[start..].find('"').unwrap();
        svg[start..end].parse().unwrap()
    };
    let (width, height) = (attr("width"), attr("height"));
    let start = svg.find(" d=\"").unwrap() + 4;
    let end = start + svg[start..].find('"').unwrap();
    let mut dark = vec![false; width * height];
    for rect in svg[start..end].split('M').filter(|s| !s.is_empty()) {
        let numbers: Vec<usize> = rect
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        let [x, y, w, h, ..] = numbers[..] else {
            panic!("unexpected path segment {rect:?}");
        };
        for row in y..y + h {
            for col in x..x + w {
                dark[row * width + col] = true;
            }
        }
    }
    let mut image = rqrr::PreparedImage::prepare_from_greyscale(width, height, |x, y| {
        if dark[y * width + x] { 0 } else { 255 }
    });
    let grids = image.detect_grids();
    assert_eq!(grids.len(), 1, "QR codes found");
    grids[0].decode().unwrap().1
}
