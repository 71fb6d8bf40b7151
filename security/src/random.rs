//! Random bytes from the operating system (through ring), for serials, secrets and tokens.

use ring::rand::{SecureRandom, SystemRandom};

/// The system's random generator failed.
#[derive(Debug, thiserror::Error)]
#[error("the system random generator failed")]
pub struct RandomError;

/// Fills `buf` with random bytes.
pub fn fill(buf: &mut [u8]) -> Result<(), RandomError> {
    SystemRandom::new().fill(buf).map_err(|_| RandomError)
}

/// `n` random bytes as lowercase hex.
pub fn hex(n: usize) -> Result<String, RandomError> {
    let mut b = vec![0u8; n];
    fill(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}
