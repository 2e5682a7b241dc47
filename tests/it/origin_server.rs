//! A small HTTP/1.1 origin for tests: serves files with range requests on loopback, throttled to a
//! WAN-like rate, counting the bytes it sends, and optionally corrupting one byte of the file.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct OriginServer {
    pub port: u16,
    pub served: Arc<AtomicU64>,
    /// Requests answered (of any kind).
    pub requests: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

struct Shared {
    files: HashMap<String, Vec<u8>>,
    /// Bytes per second over all connections (0 = unlimited).
    rate: u64,
    paid_until: Mutex<Instant>,
    corrupt_offset: Option<u64>,
    served: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    /// Answer every request with a 302 to this base URL instead of serving.
    redirect: Option<String>,
}

impl OriginServer {
    pub fn start(files: HashMap<String, Vec<u8>>, rate: u64, corrupt_offset: Option<u64>) -> OriginServer {
        Self::start_with(files, rate, corrupt_offset, None)
    }

    /// An origin that redirects every request to `target` + the requested path.
    pub fn redirecting(target: &str) -> OriginServer {
        Self::start_with(HashMap::new(), 0, None, Some(target.to_string()))
    }

    fn start_with(
        files: HashMap<String, Vec<u8>>,
        rate: u64,
        corrupt_offset: Option<u64>,
        redirect: Option<String>,
    ) -> OriginServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            files,
            rate,
            paid_until: Mutex::new(Instant::now()),
            corrupt_offset,
            served: served.clone(),
            requests: requests.clone(),
            redirect,
        });
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let shared = shared.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &shared);
                });
            }
        });
        OriginServer { port, served, requests, stop }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for OriginServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn throttle(s: &Shared, n: u64) {
    if s.rate == 0 {
        return;
    }
    let wake = {
        let mut paid = s.paid_until.lock().unwrap();
        let now = Instant::now();
        if *paid < now {
            *paid = now;
        }
        *paid += Duration::from_secs_f64(n as f64 / s.rate as f64);
        *paid
    };
    let now = Instant::now();
    if wake > now {
        std::thread::sleep(wake - now);
    }
}

fn serve(conn: TcpStream, s: &Shared) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
        let mut range = None;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some(v) = h.strip_prefix("range: ").or_else(|| h.strip_prefix("Range: ")) {
                let v = v.trim_start_matches("bytes=");
                if let Some((a, b)) = v.split_once('-') {
                    range = Some((a.parse::<u64>().unwrap_or(0), b.parse::<u64>().unwrap_or(0)));
                }
            }
        }
        s.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(target) = &s.redirect {
            let head = format!("HTTP/1.1 302 Found\r\nlocation: {target}/{path}\r\ncontent-length: 0\r\n\r\n");
            out.write_all(head.as_bytes())?;
            continue;
        }
        let Some(file) = s.files.get(&path) else {
            out.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")?;
            continue;
        };
        let (a, b) = range.unwrap_or((0, file.len() as u64 - 1));
        let b = b.min(file.len() as u64 - 1);
        let mut body = file[a as usize..=b as usize].to_vec();
        if let Some(off) = s.corrupt_offset
            && (a..=b).contains(&off)
        {
            body[(off - a) as usize] ^= 0xff;
        }
        let head = format!(
            "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes {a}-{b}/{}\r\ncontent-length: {}\r\n\r\n",
            file.len(),
            body.len()
        );
        out.write_all(head.as_bytes())?;
        for piece in body.chunks(16 * 1024) {
            throttle(s, piece.len() as u64);
            out.write_all(piece)?;
            s.served.fetch_add(piece.len() as u64, Ordering::Relaxed);
        }
    }
}
