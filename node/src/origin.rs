//! Fetching chunks from origin servers (a vendor download or the company's mirror) with HTTP range
//! requests. Every response is bounded to the expected length and verified (step C1) by the
//! caller before it is stored.

use std::time::Duration;

use lanpatch_protocol::{FileEntry, RelPath};

#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("origin answered HTTP {0}")]
    Status(u16),
    #[error("origin ignored the range request (HTTP 200 instead of 206 Partial Content)")]
    NoRange,
    #[error("origin sent {actual} bytes for a {expected}-byte range")]
    WrongLength { expected: u32, actual: usize },
    #[error("origin redirect refused: {0}")]
    Redirect(String),
    #[error("origin request failed: {0}")]
    Http(String),
}

/// Which redirects the origin client follows (`origin_redirects` in node.toml).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RedirectPolicy {
    /// None: a 3xx answer is a failure.
    None,
    /// Only to the same scheme, host and port as the request (at most 5 hops).
    #[default]
    SameOrigin,
}

fn same_origin(a: &reqwest::Url, b: &reqwest::Url) -> bool {
    a.scheme() == b.scheme() && a.host_str() == b.host_str() && a.port_or_known_default() == b.port_or_known_default()
}

#[derive(Clone)]
pub struct Origins {
    client: reqwest::Client,
}

/// `<base>/<file path>`, with each path component percent-encoded where needed.
pub fn file_url(base: &str, path: &RelPath) -> String {
    let mut url = base.trim_end_matches('/').to_string();
    for c in path.components() {
        url.push('/');
        for b in c.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                url.push(b as char);
            } else {
                url.push_str(&format!("%{b:02X}"));
            }
        }
    }
    url
}

impl Origins {
    pub fn new(redirects: RedirectPolicy) -> anyhow::Result<Origins> {
        let policy = match redirects {
            RedirectPolicy::None => reqwest::redirect::Policy::none(),
            RedirectPolicy::SameOrigin => reqwest::redirect::Policy::custom(|attempt| {
                let first = attempt.previous().first().cloned();
                let to = attempt.url().clone();
                match first {
                    Some(from) if !same_origin(&from, &to) => {
                        let why = format!("{from} redirected to another origin ({to})");
                        attempt.error(why)
                    }
                    _ if attempt.previous().len() >= 5 => attempt.error("more than 5 redirects"),
                    _ => attempt.follow(),
                }
            }),
        };
        let client = reqwest::Client::builder()
            .redirect(policy)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(4)
            .user_agent(format!("lanpatch-node/{}", crate::VERSION))
            .build()?;
        Ok(Origins { client })
    }

    /// Fetches chunk `idx` of `file` from `base`. Reads at most the expected length.
    pub async fn fetch(&self, base: &str, file: &FileEntry, idx: u32) -> Result<Vec<u8>, OriginError> {
        let Some((offset, len)) = file.chunk_range(idx) else {
            return Err(OriginError::WrongLength { expected: 0, actual: 0 });
        };
        let url = file_url(base, &file.path);
        let range = format!("bytes={}-{}", offset, offset + u64::from(len) - 1);
        let resp = self.client.get(&url).header(reqwest::header::RANGE, range).send().await.map_err(|e| {
            if e.is_redirect() { OriginError::Redirect(error_chain(&e)) } else { OriginError::Http(error_chain(&e)) }
        })?;
        let status = resp.status().as_u16();
        if (300..400).contains(&status) {
            return Err(OriginError::Redirect(format!(
                "HTTP {status} and redirects are not followed (origin_redirects = \"none\")"
            )));
        }
        if status == 200 && !(offset == 0 && u64::from(len) == file.size) {
            return Err(OriginError::NoRange);
        }
        if status != 206 && status != 200 {
            return Err(OriginError::Status(status));
        }
        let mut body = crate::bufpool::with_capacity(len as usize);
        let mut resp = resp;
        while let Some(piece) = resp.chunk().await.map_err(|e| OriginError::Http(e.to_string()))? {
            if body.len() + piece.len() > len as usize {
                return Err(OriginError::WrongLength { expected: len, actual: body.len() + piece.len() });
            }
            body.extend_from_slice(&piece);
        }
        if body.len() != len as usize {
            return Err(OriginError::WrongLength { expected: len, actual: body.len() });
        }
        Ok(body)
    }
}

/// An error with its causes, on one line (reqwest's own message leaves the cause out).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_escape_unusual_characters_per_component() {
        let p: RelPath = "dir one/pkg+1.deb".parse().unwrap();
        assert_eq!(file_url("http://mirror/rel/", &p), "http://mirror/rel/dir%20one/pkg%2B1.deb");
    }
}
