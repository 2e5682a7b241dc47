//! `lanpatch-signer`: the admin's tool for keys, trust roots, releases, approvals and yanks.
//!
//! This file only parses the command line and dispatches: each subcommand lives in its own
//! module (its arguments and its flow), helpers shared by several live in `bundle`, `fleet`,
//! `keys`, `time` and `report`.

mod approve;
mod bundle;
mod completions;
mod cosign;
mod ctx;
mod deb;
mod enroll;
mod exit;
mod feeds;
mod fleet;
mod inventory;
mod keygen;
mod keys;
mod man;
mod pending;
mod publish;
mod release;
mod report;
mod revoke;
mod root;
mod status;
mod time;
mod verify;
mod vulns;
mod yank;

use anyhow::Result;
use clap::{Parser, Subcommand};
use lanpatch_protocol::Limits;

use crate::ctx::Ctx;

#[derive(Parser)]
#[command(name = "lanpatch-signer", version, about = "Sign and approve lanpatch releases", long_about = None)]
struct Cli {
    /// Use secret key files even when their mode lets others read them (prints a warning).
    #[arg(long, global = true)]
    allow_insecure_key_mode: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create an ed25519 key pair: FILE (secret, mode 0600) and FILE.pub. Never overwrites.
    Keygen(keygen::KeygenArgs),
    /// Create, sign, rotate and show trust roots.
    #[command(subcommand)]
    Root(root::RootCmd),
    /// Package, sign and show releases.
    #[command(subcommand)]
    Release(release::ReleaseCmd),
    /// Approve a release for a ring (or co-sign an existing approval for that ring).
    Approve(approve::ApproveArgs),
    /// Withdraw a release (or co-sign an existing yank).
    Yank(yank::YankArgs),
    /// What waits for signatures in the bundles here: manifests, approvals and yanks, who
    /// signed, how many more are needed and the next admin's exact command; with --node, what
    /// is not yet published and which ring's gate waits for its approval.
    Pending(pending::PendingArgs),
    /// Check a bundle offline against a trust root and say exactly what is wrong, or that it is valid.
    Verify(verify::VerifyArgs),
    /// Show the fleet's install results (from a collector node), per ring and state, with the
    /// failing nodes and their error output.
    Status(status::StatusArgs),
    /// Query the fleet's inventory (from a collector node): which nodes have package P below
    /// version V, and nodes per tag, OS or ring.
    Inventory(inventory::InventoryArgs),
    /// Hand a signed bundle to a running node on this machine, which verifies it, seeds its files
    /// and gossips its manifest, approvals and yank to the fleet; or (--metadata) one signed file
    /// such as a revocation list, which the node verifies, keeps and gossips.
    Publish(publish::PublishArgs),
    /// Enroll nodes: issue, co-sign and show node certificates (signed by the root's enroll role).
    #[command(subcommand)]
    Enroll(enroll::EnrollCmd),
    /// Revoke node keys (or take them off the list): write a new signed revocation list.
    Revoke(revoke::RevokeArgs),
    /// Import vulnerability feeds (OSV Debian records, EPSS CSV, CISA KEV JSON) from local files,
    /// or show what is imported.
    #[command(subcommand)]
    Feeds(feeds::FeedsCmd),
    /// Which hosts are exposed to which CVEs (the collector's inventories against the imported
    /// feeds), most urgent first: known exploited, then EPSS, then CVSS.
    Vulns(vulns::VulnsArgs),
    /// Print shell completions to stdout (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
    /// Write man pages (roff) for lanpatch-signer and each subcommand into a directory.
    Man(man::ManArgs),
}

/// `lanpatch-signer ... | head`: when the reader closes stdout, the command ends quietly with exit 0
/// (Rust ignores SIGPIPE, so printing would panic with "failed printing to stdout").
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg =
            payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied());
        if msg.is_some_and(|m| m.starts_with("failed printing to stdout") && m.contains("Broken pipe")) {
            std::process::exit(0);
        }
        default(info)
    }));
}

fn main() -> std::process::ExitCode {
    quiet_on_closed_stdout();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(exit::code_of(&e))
        }
    }
}

fn run(cli: Cli) -> Result<std::process::ExitCode> {
    let ctx = Ctx {
        limits: Limits::default(),
        now: time::now(),
        key_mode: if cli.allow_insecure_key_mode { keys::KeyMode::AllowInsecure } else { keys::KeyMode::Strict },
    };
    let command = || <Cli as clap::CommandFactory>::command();
    match cli.cmd {
        Cmd::Keygen(a) => keygen::run(a)?,
        Cmd::Root(cmd) => root::run(cmd, &ctx)?,
        Cmd::Release(cmd) => release::run(cmd, &ctx)?,
        Cmd::Approve(a) => approve::run(a, &ctx)?,
        Cmd::Yank(a) => yank::run(a, &ctx)?,
        Cmd::Pending(a) => pending::run(a, &ctx)?,
        Cmd::Verify(a) => return verify::run(a, &ctx),
        Cmd::Status(a) => status::run(a, &ctx)?,
        Cmd::Inventory(a) => inventory::run(a)?,
        Cmd::Publish(a) => publish::run(a, &ctx)?,
        Cmd::Enroll(cmd) => enroll::run(cmd, &ctx.limits, ctx.now, ctx.key_mode)?,
        Cmd::Revoke(a) => revoke::run(a, &ctx.limits, ctx.now, ctx.key_mode)?,
        Cmd::Feeds(cmd) => feeds::run(cmd)?,
        Cmd::Vulns(a) => vulns::run(a, &ctx)?,
        Cmd::Completions(a) => completions::run(a, command()),
        Cmd::Man(a) => man::write_man_pages(command(), &a.out)?,
    }
    Ok(std::process::ExitCode::SUCCESS)
}
