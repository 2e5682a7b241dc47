//! Writes the seed corpora (`fuzz/corpus/<target>/`) from real encodings: `cargo run --manifest-path
//! fuzz/Cargo.toml --example seed`. Deterministic: the same files every time.

use std::fs;
use std::path::Path;

use futures::io::Cursor;
use lanpatch_node::wire::{self, Request, Response};
use lanpatch_protocol::control::{ControlRequest, ControlResponse, ErrorKind, PublishMode};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    fs::write(dir.join(name), bytes).unwrap_or_else(|e| panic!("write {name}: {e}"));
}

fn frame<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut c = Cursor::new(Vec::new());
    futures::executor::block_on(wire::write_frame(&mut c, v)).unwrap_or_else(|e| panic!("frame: {e}"));
    c.into_inner()
}

fn main() {
    let root = lanpatch_fuzz::root();
    let m = lanpatch_fuzz::manifest();
    let a = lanpatch_fuzz::approval(&m);
    let y = lanpatch_fuzz::yank(&m);
    let r = lanpatch_fuzz::report(&m);
    let i = lanpatch_fuzz::inventory(&m);
    let st = lanpatch_fuzz::statement(&m);
    let (digest, pull) = lanpatch_fuzz::sync(&m);
    write("membership", "certificate", &lanpatch_fuzz::certificate().to_bytes());
    write("membership", "revocations", &lanpatch_fuzz::revocations().to_bytes());
    write("membership", "report", &r.to_bytes());
    write("envelope", "certificate", &lanpatch_fuzz::certificate().to_bytes());
    write("envelope", "revocations", &lanpatch_fuzz::revocations().to_bytes());
    write("sync", "digest", &digest.to_bytes());
    write("sync", "pull", &pull.to_bytes());
    write("envelope", "digest", &digest.to_bytes());
    write("envelope", "pull", &pull.to_bytes());
    let all: [(&str, Vec<u8>); 7] = [
        ("statement", st.to_bytes()),
        ("root", root.to_bytes()),
        ("manifest", m.to_bytes()),
        ("approval", a.to_bytes()),
        ("yank", y.to_bytes()),
        ("report", r.to_bytes()),
        ("inventory", i.to_bytes()),
    ];
    for (kind, bytes) in &all {
        write(kind, "real", bytes);
        write("envelope", kind, bytes);
    }

    let h = lanpatch_fuzz::some_hash();
    write("wire_frame", "chunk_req", &frame(&Request::Chunk { file: h, index: 3 }));
    write("wire_frame", "have_req", &frame(&Request::Have { manifest: h }));
    write("wire_frame", "catalog_req", &frame(&Request::Catalog));
    write("wire_frame", "peers_req", &frame(&Request::Peers));
    let mut chunk = frame(&Response::Chunk { len: 5 });
    chunk.extend_from_slice(b"hello");
    write("wire_frame", "chunk_resp", &chunk);
    write(
        "wire_frame",
        "have_resp",
        &frame(&Response::Have { bits: wire::pack_bits(&[true, false, true]), downloading: true }),
    );
    write(
        "wire_frame",
        "catalog_resp",
        &frame(&Response::Catalog { items: vec![serde_bytes::ByteBuf::from(m.to_bytes())] }),
    );
    write(
        "wire_frame",
        "peers_resp",
        &frame(&Response::Peers { peers: vec![("12D3KooWA".into(), vec!["/ip4/10.0.0.2/tcp/4717".into()])] }),
    );
    write("wire_frame", "busy", &frame(&Response::Busy));

    let reqs = [
        ControlRequest::Status,
        ControlRequest::Publish { bundle: "/srv/openssl-7".into(), mode: PublishMode::MetadataOnly },
        ControlRequest::RawGossip { hex: hex::encode(m.to_bytes()) },
        ControlRequest::Reports,
        ControlRequest::Inventories,
    ];
    for (n, req) in reqs.iter().enumerate() {
        write("control_line", &format!("req{n}"), &serde_json::to_vec(req).unwrap_or_default());
    }
    let resp = ControlResponse::Error { kind: ErrorKind::NotCollector, message: "not a collector".into() };
    write("control_line", "err", &serde_json::to_vec(&resp).unwrap_or_default());
    let published = ControlResponse::Published {
        manifest: m.payload_hash().to_hex(),
        product: "openssl".into(),
        version: 7,
        approvals: vec!["canary".into()],
        yanked: false,
    };
    write("control_line", "published", &serde_json::to_vec(&published).unwrap_or_default());

    write(
        "node_config",
        "full",
        br#"data_dir = "/var/lib/lanpatch"
trust_root = "/etc/lanpatch/root.lpr"
listen = ["/ip4/0.0.0.0/tcp/4717"]
static_peers = ["/ip4/10.0.0.1/tcp/4717"]
ring = "canary"
tags = ["kiosk", "floor-2"]
upload_limit = 10485760
cache_quota = 21474836480
collector = false
shutdown_grace_secs = 30
[[maintenance_windows]]
days = ["mon", "tue"]
start = "22:00"
end = "04:00"
[fault_injection]
corrupt_uploads = "always"
"#,
    );
    write("node_config", "minimal", b"data_dir = \"data\"\ntrust_root = \"root.lpr\"\n");
}
