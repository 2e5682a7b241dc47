//! The secret key file format, shared by the signer (admin keys) and the node (the online
//! timestamp key): one line, `lanpatch-secret-key-v1 <64 hex digits>` (the ed25519 seed).

/// The first word of a secret key file.
pub const SECRET_PREFIX: &str = "lanpatch-secret-key-v1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    #[error("not a lanpatch secret key file (expected a line starting with `{SECRET_PREFIX}`)")]
    NotAKeyFile,
    #[error("the key must be 64 hex digits")]
    BadHex,
}

/// The 32-byte ed25519 seed in a secret key file's text.
pub fn parse_secret(text: &str) -> Result<[u8; 32], KeyFileError> {
    let hex_part = text.trim().strip_prefix(SECRET_PREFIX).map(str::trim).ok_or(KeyFileError::NotAKeyFile)?;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut seed).map_err(|_| KeyFileError::BadHex)?;
    Ok(seed)
}

/// The text of a secret key file for `seed`.
pub fn format_secret(seed: &[u8; 32]) -> String {
    format!("{SECRET_PREFIX} {}\n", hex::encode(seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip_and_garbage_is_refused() {
        let seed = [7u8; 32];
        assert_eq!(parse_secret(&format_secret(&seed)), Ok(seed));
        assert_eq!(parse_secret("hello"), Err(KeyFileError::NotAKeyFile));
        assert_eq!(parse_secret("lanpatch-secret-key-v1 abcd"), Err(KeyFileError::BadHex));
    }
}
