//! Users: argon2id password hashes (PHC strings) and TOTP second factors (RFC 6238: SHA-1,
//! six digits, 30 s steps, one step of clock skew either way, each step usable once).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use novacron_proto::controller as pb;
use prost::Message;

use super::{check_name, decode, user_key, IamError, Result};
use crate::store::{Op, Store};
use crate::util::now_ms;

/// TOTP step (seconds).
pub const TOTP_STEP: u64 = 30;
/// TOTP code length.
pub const TOTP_DIGITS: usize = 6;
/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 8;
/// Issuer shown by authenticator apps.
const TOTP_ISSUER: &str = "NovaCron";

/// A stored user: the public [`pb::User`] plus its secrets.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UserRecord {
    /// What the API shows.
    #[prost(message, optional, tag = "1")]
    pub user: Option<pb::User>,
    /// argon2id PHC string.
    #[prost(string, tag = "2")]
    pub password_hash: String,
    /// The active TOTP secret (empty: none enrolled).
    #[prost(bytes = "vec", tag = "3")]
    pub totp_secret: Vec<u8>,
    /// A secret being enrolled, active once a code from it is confirmed.
    #[prost(bytes = "vec", tag = "4")]
    pub totp_pending: Vec<u8>,
    /// The last TOTP step accepted (a code works once).
    #[prost(uint64, tag = "5")]
    pub totp_last_step: u64,
}

impl UserRecord {
    /// The user's name.
    pub fn name(&self) -> &str {
        self.user.as_ref().map(|u| u.name.as_str()).unwrap_or("")
    }

    /// Whether the user is an admin.
    pub fn admin(&self) -> bool {
        self.user.as_ref().is_some_and(|u| u.admin)
    }
}

/// Random bytes from the OS.
pub(crate) fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| IamError::Internal(format!("no randomness: {e}")))?;
    Ok(b)
}

/// The argon2id PHC string of `password` with a fresh salt.
pub fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::encode_b64(&random::<16>()?)
        .map_err(|e| IamError::Internal(format!("salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| IamError::Internal(format!("password hash: {e}")))
}

/// Whether `password` matches the PHC string `hash` (false for a malformed hash).
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

fn totp(secret: &[u8]) -> Result<totp_rs::TOTP> {
    totp_rs::TOTP::new(
        totp_rs::Algorithm::SHA1,
        TOTP_DIGITS,
        1,
        TOTP_STEP,
        secret.to_vec(),
    )
    .map_err(|e| IamError::Internal(format!("totp: {e}")))
}

/// The TOTP code of `secret` at `unix_s` (what an authenticator shows then).
pub fn totp_code(secret: &[u8], unix_s: u64) -> Result<String> {
    Ok(totp(secret)?.generate(unix_s))
}

/// The step `code` belongs to when it is valid at `unix_s` (one step of skew either way)
/// and later than `last_step`.
pub fn check_totp(secret: &[u8], code: &str, unix_s: u64, last_step: u64) -> Result<Option<u64>> {
    let t = totp(secret)?;
    let now = unix_s / TOTP_STEP;
    let mut hit = None;
    for step in [now.saturating_sub(1), now, now + 1] {
        let want = t.generate(step * TOTP_STEP);
        let same: bool =
            subtle::ConstantTimeEq::ct_eq(want.as_bytes(), code.trim().as_bytes()).into();
        if same && step > last_step {
            hit = Some(step);
        }
    }
    Ok(hit)
}

/// Base32 (RFC 4648, no padding) of a TOTP secret.
pub fn base32(secret: &[u8]) -> String {
    const A: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in secret {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(A[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(A[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// The enrolment answer for `secret`: base32 and the otpauth URL (user names are
/// `[a-z0-9._-]`, nothing to escape).
pub fn enrolment(user: &str, secret: &[u8]) -> pb::EnrollTotpResponse {
    let s = base32(secret);
    pb::EnrollTotpResponse {
        otpauth_url: format!(
            "otpauth://totp/{TOTP_ISSUER}:{user}?secret={s}&issuer={TOTP_ISSUER}&algorithm=SHA1&digits={TOTP_DIGITS}&period={TOTP_STEP}"
        ),
        secret: s,
    }
}

/// A user record by name.
pub fn get(store: &Store, name: &str) -> Result<Option<UserRecord>> {
    let key = user_key(name);
    store
        .iam_record(&key)?
        .map(|b| decode(&key, &b))
        .transpose()
}

/// Every user record, by name.
pub fn all(store: &Store) -> Result<Vec<UserRecord>> {
    store
        .iam_records("user/")?
        .into_iter()
        .map(|(k, v)| decode(&k, &v))
        .collect()
}

/// A new user record (checked name and password, hashed).
pub fn new_record(name: &str, password: &str, admin: bool) -> Result<UserRecord> {
    check_name("user", name)?;
    if password.chars().count() < MIN_PASSWORD {
        return Err(IamError::InvalidArgument(format!(
            "the password must have at least {MIN_PASSWORD} characters"
        )));
    }
    Ok(UserRecord {
        user: Some(pb::User {
            name: name.to_string(),
            admin,
            totp_enabled: false,
            created_at_ms: now_ms(),
        }),
        password_hash: hash_password(password)?,
        ..Default::default()
    })
}

/// Stores a user record.
pub fn put(store: &Store, rec: &UserRecord) -> Result<()> {
    let key = user_key(rec.name());
    store.apply(&[Op::PutIam(&key, rec.encode_to_vec())])?;
    Ok(())
}

pub(super) fn bootstrap_admin(
    store: &Store,
    name: &str,
    password: &str,
    with_totp: bool,
) -> Result<Option<pb::EnrollTotpResponse>> {
    if let Some(a) = all(store)?.iter().find(|u| u.admin()) {
        return Err(IamError::FailedPrecondition(format!(
            "an admin exists already ({}): log in as them and use `novactl user create --admin`",
            a.name()
        )));
    }
    if get(store, name)?.is_some() {
        return Err(IamError::AlreadyExists(format!(
            "user {name} already exists"
        )));
    }
    let mut rec = new_record(name, password, true)?;
    let mut out = None;
    if with_totp {
        let secret = random::<20>()?;
        rec.totp_secret = secret.to_vec();
        if let Some(u) = rec.user.as_mut() {
            u.totp_enabled = true;
        }
        out = Some(enrolment(name, &secret));
    }
    put(store, &rec)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password(&h, "correct horse"));
        assert!(!verify_password(&h, "correct hors"));
        assert!(!verify_password("garbage", "correct horse"));
        // Salted: the same password hashes differently.
        assert_ne!(h, hash_password("correct horse").unwrap());
    }

    /// RFC 6238 appendix B, SHA-1 (eight digits there; the last six here).
    #[test]
    fn totp_matches_rfc6238_and_is_single_use() {
        let secret = b"12345678901234567890";
        assert_eq!(totp_code(secret, 59).unwrap(), "287082");
        assert_eq!(totp_code(secret, 1111111109).unwrap(), "081804");
        assert_eq!(totp_code(secret, 2000000000).unwrap(), "279037");
        let t = 1111111109;
        let step = t / TOTP_STEP;
        assert_eq!(check_totp(secret, "081804", t, 0).unwrap(), Some(step));
        // Skew of one step either way, not two.
        assert_eq!(check_totp(secret, "081804", t + 30, 0).unwrap(), Some(step));
        assert_eq!(check_totp(secret, "081804", t + 60, 0).unwrap(), None);
        // Used once: the same step again is refused.
        assert_eq!(check_totp(secret, "081804", t, step).unwrap(), None);
        assert_eq!(check_totp(secret, "000000", t, 0).unwrap(), None);
    }

    #[test]
    fn base32_and_otpauth() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32(b"f"), "MY");
        let e = enrolment("alice", b"foobar");
        assert!(e
            .otpauth_url
            .starts_with("otpauth://totp/NovaCron:alice?secret=MZXW6YTBOI&"));
    }
}
