//! Tokens. Session tokens are JWTs signed with the controller's Ed25519 key (`EdDSA`, the
//! only algorithm accepted), kept in `<data-dir>/iam-signing.key` (the 32-byte seed, mode
//! 0600, created on first start). API tokens are `nct_<id>.<secret>`: 8 random bytes of id
//! and 32 of secret, hex; the store keeps only the secret's SHA-256, compared in constant
//! time.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use novacron_proto::controller as pb;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::users::random;
use super::{token_key, IamError, Result};
use crate::store::{Op, Store};
use crate::util::now_ms;

/// The key file in the data directory.
pub const KEY_FILE: &str = "iam-signing.key";
/// The issuer claim of session tokens.
pub const ISSUER: &str = "novacron-controller";
/// The prefix of API tokens.
pub const API_PREFIX: &str = "nct_";

/// The claims of a session token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// User name.
    pub sub: String,
    /// Issuer ([`ISSUER`]).
    pub iss: String,
    /// Issued at (s since the epoch).
    pub iat: u64,
    /// Expires at (s since the epoch).
    pub exp: u64,
    /// Token id.
    pub jti: String,
}

/// The controller's token signing key (Ed25519).
pub struct SigningKey {
    enc: EncodingKey,
    dec: DecodingKey,
    path: PathBuf,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// PKCS#8 v1 wrapping of an Ed25519 seed (RFC 8410): a fixed prefix, then the 32 bytes.
fn pkcs8(seed: &[u8; 32]) -> Vec<u8> {
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut v = PREFIX.to_vec();
    v.extend_from_slice(seed);
    v
}

impl SigningKey {
    /// A key from its 32-byte seed.
    pub fn from_seed(seed: &[u8; 32], path: PathBuf) -> Self {
        let public = ed25519_dalek::SigningKey::from_bytes(seed)
            .verifying_key()
            .to_bytes();
        SigningKey {
            enc: EncodingKey::from_ed_der(&pkcs8(seed)),
            dec: DecodingKey::from_ed_der(&public),
            path,
        }
    }

    /// Loads `<dir>/iam-signing.key`, creating it (0600) with a fresh seed when absent.
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        let path = dir.join(KEY_FILE);
        let err = |reason: String| IamError::Key {
            path: path.display().to_string(),
            reason,
        };
        match std::fs::read(&path) {
            Ok(b) => {
                let seed: [u8; 32] = b.as_slice().try_into().map_err(|_| {
                    err(format!(
                        "holds {} bytes, not a 32-byte Ed25519 seed (remove it to make a new key; \
                         every session token is then invalid)",
                        b.len()
                    ))
                })?;
                Ok(Self::from_seed(&seed, path))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
                let seed = random::<32>()?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| err(format!("cannot create: {e}")))?;
                f.write_all(&seed)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| err(format!("cannot write: {e}")))?;
                Ok(Self::from_seed(&seed, path))
            }
            Err(e) => Err(err(format!("cannot read: {e}"))),
        }
    }

    /// A session token for `user` issued at `iat_s`, valid `ttl_s`; and its expiry (ms).
    pub fn issue(&self, user: &str, iat_s: u64, ttl_s: u64) -> Result<(String, i64)> {
        let claims = Claims {
            sub: user.to_string(),
            iss: ISSUER.to_string(),
            iat: iat_s,
            exp: iat_s + ttl_s,
            jti: hex(&random::<8>()?),
        };
        let t = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &self.enc)
            .map_err(|e| IamError::Internal(format!("cannot sign a token: {e}")))?;
        Ok((t, (claims.exp as i64).saturating_mul(1000)))
    }

    /// The claims of a valid session token (signature, algorithm, issuer and expiry
    /// checked; no leeway).
    pub fn verify(&self, token: &str) -> Result<Claims> {
        let mut v = Validation::new(Algorithm::EdDSA);
        v.leeway = 0;
        v.set_issuer(&[ISSUER]);
        v.set_required_spec_claims(&["exp", "iss", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &self.dec, &v)
            .map(|d| d.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                IamError::Unauthenticated(match e.kind() {
                    K::ExpiredSignature => "session token expired: log in again".to_string(),
                    K::InvalidSignature => "invalid session token: bad signature".to_string(),
                    _ => format!("invalid session token: {e}"),
                })
            })
    }
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// SHA-256 of an API token's secret.
pub fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// A fresh API token: (id, secret, the token as given to the user).
pub fn new_api_token() -> Result<(String, String, String)> {
    let id = hex(&random::<8>()?);
    let secret = hex(&random::<32>()?);
    let token = format!("{API_PREFIX}{id}.{secret}");
    Ok((id, secret, token))
}

/// Splits `nct_<id>.<secret>`; `None` when the text is not shaped like an API token.
pub fn parse_api_token(t: &str) -> Option<(&str, &str)> {
    let rest = t.strip_prefix(API_PREFIX)?;
    let (id, secret) = rest.split_once('.')?;
    let hexy = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_hexdigit());
    (hexy(id) && hexy(secret) && id.len() == 16).then_some((id, secret))
}

/// Stores a new API token of `user` for `project` with `role` (no checks: the caller
/// decided it may), valid `ttl_s` (0: until revoked); returns what the API shows and the
/// token itself, which is never stored.
pub fn mint(
    store: &Store,
    user: &str,
    project: &str,
    role: i32,
    description: &str,
    ttl_s: u64,
) -> Result<(pb::ApiToken, String)> {
    let (id, secret, token) = new_api_token()?;
    let now = now_ms();
    let info = pb::ApiToken {
        id: id.clone(),
        user: user.to_string(),
        project: project.to_string(),
        role,
        description: description.to_string(),
        created_at_ms: now,
        expires_at_ms: if ttl_s == 0 {
            0
        } else {
            now.saturating_add(
                i64::try_from(ttl_s)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1000),
            )
        },
        revoked: false,
    };
    let rec = TokenRecord {
        info: Some(info.clone()),
        digest: digest(&secret),
    };
    store.apply(&[Op::PutIam(
        &token_key(&id),
        prost::Message::encode_to_vec(&rec),
    )])?;
    Ok((info, token))
}

/// A stored API token: what the API shows, and the digest of its secret.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TokenRecord {
    /// What the API shows.
    #[prost(message, optional, tag = "1")]
    pub info: Option<pb::ApiToken>,
    /// SHA-256 of the secret.
    #[prost(bytes = "vec", tag = "2")]
    pub digest: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!("novacron-keys-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn session_tokens_verify_only_with_their_key() {
        use std::os::unix::fs::PermissionsExt;
        let d = tmp();
        let k = SigningKey::load_or_create(&d).unwrap();
        let mode = std::fs::metadata(d.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let now = crate::util::now_ms() as u64 / 1000;
        let (t, exp) = k.issue("alice", now, 60).unwrap();
        assert_eq!(exp, ((now + 60) * 1000) as i64);
        assert_eq!(k.verify(&t).unwrap().sub, "alice");
        // The same key after a restart.
        assert_eq!(
            SigningKey::load_or_create(&d)
                .unwrap()
                .verify(&t)
                .unwrap()
                .sub,
            "alice"
        );
        // Another key, an expired token, a tampered one.
        let other = SigningKey::from_seed(&[7; 32], d.join("x"));
        assert!(matches!(
            other.verify(&t),
            Err(IamError::Unauthenticated(_))
        ));
        let (old, _) = k.issue("alice", now - 120, 60).unwrap();
        let e = k.verify(&old).unwrap_err().to_string();
        assert!(e.contains("expired"), "{e}");
        let mut bad = t.clone();
        bad.pop();
        assert!(k.verify(&bad).is_err());
        assert!(k.verify("garbage").is_err());
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn api_token_shape() {
        let (id, secret, t) = new_api_token().unwrap();
        assert_eq!(parse_api_token(&t), Some((id.as_str(), secret.as_str())));
        assert_eq!(parse_api_token("nct_zz.11"), None);
        assert_eq!(parse_api_token("eyJ..."), None);
        assert_eq!(digest(&secret).len(), 32);
    }
}
