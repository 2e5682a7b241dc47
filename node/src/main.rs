//! `lanpatch-node`: the endpoint service, its status client and the fleet demo.

use std::path::PathBuf;

use lanpatch_node::{config, control, demo, enrollment, node};

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use lanpatch_protocol::control::{ControlRequest, ControlResponse};

#[derive(Parser)]
#[command(
    name = "lanpatch-node",
    version = lanpatch_node::VERSION,
    about = "lanpatch endpoint: fetch, verify and share signed releases on the LAN"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the node service until SIGINT or SIGTERM.
    Run {
        /// The node's TOML config.
        #[arg(long)]
        config: PathBuf,
    },
    /// Ask a running node for its peers, releases and download progress.
    Status {
        /// The node's config (to find its control socket); default /etc/lanpatch/node.toml
        /// (the package's).
        #[arg(long, conflicts_with = "socket")]
        config: Option<PathBuf>,
        /// The node's control socket.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print the raw JSON status.
        #[arg(long)]
        json: bool,
    },
    /// Print a link to the running collector's web console, with its access token (read from
    /// `<data_dir>/console.token`, so it needs the node's user or root).
    ConsoleUrl {
        /// The node's config; default /etc/lanpatch/node.toml (the package's).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Make a new console token first: every session and every link printed before ends.
        #[arg(long)]
        rotate: bool,
    },
    /// Print this node's key (created on first use) for an admin to enroll: `lanpatch-signer
    /// enroll node --node-key KEY ...`.
    Id {
        /// The node's config; default /etc/lanpatch/node.toml (the package's).
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Check a node certificate against this host's trust root and key, and install it where
    /// `run` reads it (node.toml `certificate`, default `<data_dir>/node.cert`). Exit 4 when the
    /// certificate is refused.
    Join {
        /// The certificate file from `lanpatch-signer enroll`.
        certificate: PathBuf,
        /// The node's config; default /etc/lanpatch/node.toml (the package's).
        #[arg(long)]
        config: Option<PathBuf>,
        /// A rotated trust root not published to the fleet yet (moving a fleet to enrollment),
        /// checked as an update of the newest root this node holds. Repeatable, oldest first.
        #[arg(long = "root")]
        roots: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Start a small fleet on this machine, publish a signed release, watch it spread.
    Demo(demo::DemoArgs),
    /// Print shell completions to stdout (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Write man pages (roff) for lanpatch-node and each subcommand into a directory.
    Man {
        #[arg(long)]
        out: PathBuf,
    },
}

/// The Debian package's config, where `status` looks without --config or --socket.
const PACKAGED_CONFIG: &str = "/etc/lanpatch/node.toml";

/// Bounds glibc's allocator before any thread starts: at most two malloc arenas (not eight per
/// core, one per thread that happens to allocate), and a fixed mmap threshold of 128 KiB so every
/// chunk buffer (256 KiB) is its own mapping, returned to the system when freed. Without it
/// glibc raises the threshold after the first freed buffer, later buffers come from the arenas,
/// and a node's resident memory climbed ~20 MiB over 40 releases of the soak (docs/BENCHMARKS.md
/// "A long life"). Set in code, not in the unit's environment, so a node started by hand, by the
/// demo or by the package behaves the same.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn bound_the_allocator() {
    use nix::libc;
    // SAFETY: mallopt only sets allocator parameters; it is called first thing in main, before
    // any other thread exists, with documented parameters and values.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn bound_the_allocator() {}

/// `lanpatch-node ... | head`: when the reader closes stdout, the command ends quietly with exit 0
/// (Rust ignores SIGPIPE, so `println!` would panic with "failed printing to stdout").
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
    bound_the_allocator();
    quiet_on_closed_stdout();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // Exit codes (docs/OPERATIONS.md): 3 another process holds what the node needs (its
            // data directory or a listen address), 4 not enrolled (no certificate, or one that is
            // refused: expired, revoked, another node's or fleet's), 5 the exec of an upgraded
            // binary failed (systemd restarts), 2 anything else (bad config, I/O).
            if e.downcast_ref::<node::StartError>().is_some() {
                std::process::ExitCode::from(3)
            } else if e.downcast_ref::<lanpatch_node::membership::CertificateError>().is_some() {
                std::process::ExitCode::from(4)
            } else if e.downcast_ref::<node::ExecFailed>().is_some() {
                std::process::ExitCode::from(5)
            } else {
                std::process::ExitCode::from(2)
            }
        }
    }
}

/// Replaces this process with `exe`, given this process's arguments; returns only the reason
/// it could not.
fn exec_upgraded(exe: &std::path::Path) -> String {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let cstr = |s: &std::ffi::OsStr| CString::new(s.as_bytes()).map_err(|_| "an argument holds a NUL byte".to_string());
    let run = || -> Result<std::convert::Infallible, String> {
        let path = cstr(exe.as_os_str())?;
        let mut argv = vec![path.clone()];
        for a in std::env::args_os().skip(1) {
            argv.push(cstr(&a)?);
        }
        nix::unistd::execv(&path, &argv).map_err(|e| e.to_string())
    };
    match run() {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Run { config } => {
            use tracing_subscriber::layer::SubscriberExt;
            use tracing_subscriber::util::SubscriberInitExt;
            let cfg = config::Config::load(&config)?;
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log));
            let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
            let registry = tracing_subscriber::registry().with(filter);
            match cfg.log_format {
                config::LogFormat::Text => {
                    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
                    registry.with(tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr)).init()
                }
                config::LogFormat::Json => registry
                    .with(tracing_subscriber::fmt::layer().json().with_current_span(false).with_writer(std::io::stderr))
                    .init(),
            }
            let reload = node::Reload {
                config: config.clone(),
                set_log_filter: Box::new(move |f: &str| {
                    let filter = tracing_subscriber::EnvFilter::try_new(f)?;
                    handle.reload(filter)?;
                    Ok(())
                }),
            };
            match node::run(cfg, shutdown_signal(), Some(reload)).await? {
                node::Exit::Stopped => Ok(()),
                node::Exit::Upgraded(exe) => {
                    // execv, not Command::exec: glibc's execvp hands a file the kernel cannot run
                    // (ENOEXEC: another architecture's ELF) to /bin/sh. Only returns on failure:
                    // exit 5, which the unit restarts (2 and 4 it does not).
                    Err(anyhow::Error::new(node::ExecFailed(format!(
                        "cannot exec the upgraded {}: {}",
                        exe.display(),
                        exec_upgraded(&exe)
                    ))))
                }
            }
        }
        Cmd::Status { config, socket, json } => {
            let socket = match (config, socket) {
                (_, Some(s)) => s,
                (Some(c), None) => config::Config::load(&c)?.control_socket(),
                (None, None) => config::Config::load(std::path::Path::new(PACKAGED_CONFIG))
                    .map_err(|e| anyhow::anyhow!("{e:#}; give --config or --socket"))?
                    .control_socket(),
            };
            match control::request(&socket, &ControlRequest::Status).await? {
                ControlResponse::Status(st) if json => println!("{}", serde_json::to_string_pretty(&st)?),
                ControlResponse::Status(st) => demo::print_status(&st),
                ControlResponse::Error { message, .. } => bail!("node refused: {message}"),
                other => bail!("unexpected response {other:?}"),
            }
            Ok(())
        }
        Cmd::ConsoleUrl { config, rotate } => {
            let cfg = config::Config::load(&config.unwrap_or_else(|| PathBuf::from(PACKAGED_CONFIG)))?;
            lanpatch_node::console::print_url(&cfg, rotate).await
        }
        Cmd::Id { config, json } => {
            let cfg = config::Config::load(&config.unwrap_or_else(|| PathBuf::from(PACKAGED_CONFIG)))?;
            enrollment::print_id(&cfg, json)
        }
        Cmd::Join { certificate, config, roots, json } => {
            let cfg = config::Config::load(&config.unwrap_or_else(|| PathBuf::from(PACKAGED_CONFIG)))?;
            enrollment::print_join(&cfg, &certificate, &roots, json).await
        }
        Cmd::Demo(args) => demo::run(args).await,
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "lanpatch-node",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Cmd::Man { out } => write_man_pages(<Cli as clap::CommandFactory>::command(), &out),
    }
}

/// One page for the command and one per subcommand (`lanpatch-node-run.1`, ...).
fn write_man_pages(cmd: clap::Command, out: &std::path::Path) -> Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let name = cmd.get_name().to_string();
    let mut pages = vec![(name.clone(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let full = format!("{name}-{}", sub.get_name());
        pages.push((full.clone(), sub.clone().name(full)));
    }
    for (page, c) in pages {
        let mut buf = Vec::new();
        clap_mangen::Man::new(c).render(&mut buf)?;
        let path = out.join(format!("{page}.1"));
        std::fs::write(&path, buf).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
