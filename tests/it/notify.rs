//! The collector's webhook notifications (`webhook_url`): a halt, a failure and a passing ring
//! gate reach a local HTTP receiver, once each, through a receiver that is down or refuses and
//! through a restart of the collector.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lanpatch_protocol::ReleaseState;

use crate::fleet::{admin, endpoint, make_fleet_keys, sample, wait_for_node};
use crate::rollout::{approve, release};

/// A webhook receiver on loopback: records the JSON body of every POST it accepts, and
/// answers 503 to the first `refuse` requests (a receiver that is up but failing).
struct Receiver {
    port: u16,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(port: u16, refuse: usize) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let bodies: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let requests: Arc<AtomicUsize> = Arc::default();
        let stop: Arc<AtomicBool> = Arc::default();
        let (b, r, s) = (bodies.clone(), requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let n = r.fetch_add(1, Ordering::SeqCst);
                if let Some(body) = Self::handle(conn, n < refuse) {
                    b.lock().unwrap().push(body);
                }
            }
        });
        Receiver { port, bodies, requests, stop, thread: Some(thread) }
    }

    /// One request: the body when it was accepted.
    fn handle(conn: TcpStream, refuse: bool) -> Option<serde_json::Value> {
        conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let mut reader = BufReader::new(conn.try_clone().ok()?);
        let mut request_line = String::new();
        reader.read_line(&mut request_line).ok()?;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).ok()?;
            if line.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().ok()?;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).ok()?;
        let mut conn = conn;
        let status = if refuse { "503 Service Unavailable" } else { "200 OK" };
        write!(conn, "HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").ok()?;
        assert!(request_line.starts_with("POST /hooks/lanpatch "), "{request_line}");
        (!refuse).then(|| serde_json::from_slice(&body).unwrap())
    }

    fn bodies(&self) -> Vec<serde_json::Value> {
        self.bodies.lock().unwrap().clone()
    }

    fn of(&self, event: &str) -> Vec<serde_json::Value> {
        self.bodies().into_iter().filter(|b| b["event"] == event).collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn halt_failure_and_gate_ready_webhooks_are_retried_survive_a_collector_restart_and_arrive_once_each() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let port = crate::fleet::free_port();
    let url = format!("http://127.0.0.1:{port}/hooks/lanpatch");
    let mut admin = admin(dir, &format!("hostname = \"admin\"\nwebhook_url = \"{url}\""));
    let _n1 = endpoint(dir, "n1", &admin, "hostname = \"n1\"");
    let scrape = |admin: &crate::fleet::Node, series: &str| sample(&admin.scrape(), series);

    // Nobody listens yet. v1 fails on n1, whose ring's approval halts at the first failure.
    let failing = "echo step one ok\necho 'cannot write /opt/tool: disk on fire' >&2\nexit 3\n";
    let v1 = release(dir, "v1", 1, failing, "true\n", &[]);
    approve(dir, &v1, "canary", &["--max-failure-rate", "20%", "--min-reports", "1"]).ok();
    admin.publish(&v1);
    wait_for_node(&admin, Duration::from_secs(120), "the failure and the halt queued and retried", || {
        scrape(&admin, "lanpatch_webhook_queue_depth") == 2.0
            && scrape(&admin, "lanpatch_webhook_failed_attempts_total") >= 2.0
    });

    // The collector restarts while both wait; nothing is lost.
    assert!(admin.stop().is_some(), "the collector stops on SIGTERM with notifications queued");
    admin.start();
    wait_for_node(&admin, Duration::from_secs(30), "the outbox read back after the restart", || {
        scrape(&admin, "lanpatch_webhook_queue_depth") == 2.0
    });

    // The receiver comes up, refuses once (503), then takes them.
    let receiver = Receiver::start(port, 1);
    wait_for_node(&admin, Duration::from_secs(120), "the failure and the halt delivered", || {
        receiver.bodies().len() == 2 && scrape(&admin, "lanpatch_webhook_queue_depth") == 0.0
    });
    assert!(receiver.requests.load(Ordering::SeqCst) >= 3, "the refused delivery was retried");
    let failure = &receiver.of("failure")[0];
    assert_eq!((failure["host"].as_str(), failure["ring"].as_str()), (Some("n1"), Some("canary")));
    assert_eq!((failure["product"].as_str(), failure["version"].as_u64()), (Some("tool"), Some(1)));
    let state: ReleaseState = serde_json::from_value(failure["state"].clone()).unwrap();
    assert!(state.is_failure(), "{failure}");
    assert_eq!(failure["attempt"], 0);
    let text = failure["text"].as_str().unwrap();
    assert!(text.contains("tool 1 failed on `n1`") && text.contains("disk on fire"), "{text}");
    let halt = &receiver.of("halt")[0];
    assert_eq!((halt["ring"].as_str(), &halt["failure_rate"]["failed"]), (Some("canary"), &serde_json::json!(1)));
    let command = halt["command"].as_str().unwrap();
    assert!(
        command
            .contains("lanpatch-signer approve --key <approve key 1 of 2> --ring canary --replace <bundle of tool 1>")
            && command.contains("lanpatch-signer yank"),
        "{command}"
    );
    assert_eq!(failure["manifest"], halt["manifest"]);

    // With the receiver up, v2 installs on canary: the gate for pilot passes, and says how to go on.
    let v2 = release(dir, "v2", 2, "touch \"$LANPATCH_DATA/installed\"\n", "true\n", &[]);
    approve(dir, &v2, "canary", &[]).ok();
    admin.publish(&v2);
    wait_for_node(&admin, Duration::from_secs(120), "gate_ready delivered", || !receiver.of("gate_ready").is_empty());
    let gate = &receiver.of("gate_ready")[0];
    assert_eq!((gate["ring"].as_str(), gate["previous_ring"].as_str()), (Some("pilot"), Some("canary")));
    let command = gate["command"].as_str().unwrap();
    assert!(
        command.contains("lanpatch-signer approve --key <approve key 1 of 2> --ring pilot --rings canary,pilot,broad")
            && command.contains("lanpatch-signer publish --node"),
        "{command}"
    );

    // Each event exactly once: n1's re-sent reports after the restart queued nothing again.
    wait_for_node(&admin, Duration::from_secs(30), "an empty outbox", || {
        scrape(&admin, "lanpatch_webhook_queue_depth") == 0.0
    });
    let bodies = receiver.bodies();
    let ids: HashSet<&str> = bodies.iter().filter_map(|b| b["id"].as_str()).collect();
    assert_eq!(ids.len(), bodies.len(), "an event arrived twice: {bodies:#?}");
    let events: Vec<&str> = bodies.iter().filter_map(|b| b["event"].as_str()).collect();
    assert_eq!(events, ["failure", "halt", "gate_ready"], "{bodies:#?}");
    let exposition = admin.scrape();
    assert_eq!(sample(&exposition, "lanpatch_webhook_dropped_total"), 0.0);
    assert_eq!(sample(&exposition, "lanpatch_webhook_delivered_total"), 3.0, "{exposition}");
    if std::process::Command::new("promtool").arg("--version").output().is_ok() {
        let complaints = crate::metrics::promtool_complaints(&exposition);
        assert!(complaints.is_none(), "promtool check metrics: {complaints:?}\n{exposition}");
    }
}
