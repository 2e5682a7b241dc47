//! The fleet demo (filled in below) and the human-readable status printer.

use lanpatch_protocol::control::NodeStatus;

#[derive(clap::Args)]
pub struct DemoArgs {}

pub async fn run(_args: DemoArgs) -> anyhow::Result<()> {
    anyhow::bail!("demo not built yet")
}

pub fn print_status(st: &NodeStatus) {
    println!("node {} (ring {}, host {})", st.peer_id, st.ring, st.hostname);
    println!("fleet {}", st.fleet);
    for l in &st.listen {
        println!("listening on {l}");
    }
    println!("peers: {}", st.peers.len());
    for p in &st.peers {
        println!("  {} {}", p.peer, p.addr);
    }
    println!("releases:");
    for r in &st.releases {
        println!(
            "  {} {} ({}) [{}] {}/{} chunks, {} bytes, approved for {:?}{}",
            r.product,
            r.version,
            r.severity,
            r.state,
            r.have_chunks,
            r.total_chunks,
            r.total_bytes,
            r.approved_rings,
            if r.detail.is_empty() { String::new() } else { format!(": {}", r.detail) }
        );
    }
    println!("refusals: {}", st.refusals);
    for r in st.recent_refusals.iter().take(5) {
        println!("  [{}] {} from {}: {}", r.at, r.kind, r.source, r.reason);
    }
}
