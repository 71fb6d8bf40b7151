//! Join tokens: how an agent without a certificate obtains one (as with `kubeadm join`).
//!
//! `novacron-controller certs join-token --host NAME` writes a one-time record (only a hash of
//! the secret, and an expiry) into the controller's PKI directory and prints a token holding
//! the CA certificate, the host name and the secret. The agent verifies the controller's join
//! endpoint against that CA, sends a certificate request with the secret, and the controller
//! signs it for that host name and deletes the record: a token works once.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::files::{private_dir, write_file, FilesError};
use crate::identity::{valid_name, IdentityError};
use crate::random::RandomError;

/// The prefix of every join token.
pub const TOKEN_PREFIX: &str = "ncjoin1.";

/// Errors of join tokens.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The token is not one `certs join-token` printed.
    #[error("not a NovaCron join token (they start with {TOKEN_PREFIX})")]
    Malformed,
    /// The secret is unknown, already used or expired (one answer for all three, so a guesser
    /// learns nothing).
    #[error("the join token is not valid (unknown, already used or expired)")]
    Invalid,
    /// Bad host name.
    #[error(transparent)]
    Name(#[from] IdentityError),
    /// Files.
    #[error(transparent)]
    Files(#[from] FilesError),
    /// Randomness.
    #[error(transparent)]
    Random(#[from] RandomError),
}

/// What a join token carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// The CA certificate the agent verifies the controller against.
    pub ca_pem: String,
    /// The host name the certificate will be issued for.
    pub host: String,
    /// The one-time secret.
    pub secret: String,
}

impl JoinToken {
    /// The printable token.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    /// Parses a printed token (surrounding whitespace ignored).
    pub fn decode(s: &str) -> Result<Self, JoinError> {
        let body = s
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(JoinError::Malformed)?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| JoinError::Malformed)?;
        serde_json::from_slice(&json).map_err(|_| JoinError::Malformed)
    }
}

#[derive(Serialize, Deserialize)]
struct Record {
    host: String,
    expires_unix: u64,
}

/// The controller's outstanding join tokens, one file per token named by the hash of its
/// secret (so the command that mints them and the running controller share them safely).
#[derive(Debug, Clone)]
pub struct JoinTokens {
    dir: PathBuf,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hash(secret: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, secret.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl JoinTokens {
    /// The tokens kept in `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// Mints a token for `host`, valid for `ttl`.
    pub fn create(&self, ca_pem: &str, host: &str, ttl: Duration) -> Result<JoinToken, JoinError> {
        if !valid_name(host) {
            return Err(IdentityError::BadName(host.to_string()).into());
        }
        private_dir(&self.dir)?;
        let secret = crate::random::hex(32)?;
        let rec = Record {
            host: host.to_string(),
            expires_unix: now_unix().saturating_add(ttl.as_secs()),
        };
        let json = serde_json::to_string(&rec).unwrap_or_default();
        write_file(&self.dir.join(hash(&secret)), &json, 0o600)?;
        Ok(JoinToken {
            ca_pem: ca_pem.to_string(),
            host: host.to_string(),
            secret,
        })
    }

    /// Uses up the token with `secret`: the host name it was minted for.
    pub fn redeem(&self, secret: &str) -> Result<String, JoinError> {
        if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(JoinError::Invalid);
        }
        let path = self.dir.join(hash(secret));
        let text = std::fs::read_to_string(&path).map_err(|_| JoinError::Invalid)?;
        // Whoever removes the file redeemed it; a concurrent second use finds it gone.
        std::fs::remove_file(&path).map_err(|_| JoinError::Invalid)?;
        let rec: Record = serde_json::from_str(&text).map_err(|_| JoinError::Invalid)?;
        if rec.expires_unix < now_unix() {
            return Err(JoinError::Invalid);
        }
        Ok(rec.host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_work_once_and_expire() {
        let dir = std::env::temp_dir().join(format!("nc-join-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let tokens = JoinTokens::new(&dir);
        let t = tokens.create("CA", "h1", Duration::from_secs(60)).unwrap();
        let back = JoinToken::decode(&format!(" {} \n", t.encode())).unwrap();
        assert_eq!(back, t);
        assert_eq!(tokens.redeem(&t.secret).unwrap(), "h1");
        assert!(matches!(tokens.redeem(&t.secret), Err(JoinError::Invalid)));
        let expired = tokens.create("CA", "h2", Duration::ZERO).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert!(matches!(
            tokens.redeem(&expired.secret),
            Err(JoinError::Invalid)
        ));
        assert!(matches!(
            tokens.redeem("../../etc"),
            Err(JoinError::Invalid)
        ));
        assert!(matches!(
            JoinToken::decode("abc"),
            Err(JoinError::Malformed)
        ));
        assert!(tokens.create("CA", "bad/name", Duration::ZERO).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
