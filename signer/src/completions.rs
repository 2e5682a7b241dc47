//! `lanpatch-signer completions`: shell completions on stdout.

use clap::Args;

#[derive(Args)]
pub struct CompletionsArgs {
    pub shell: clap_complete::Shell,
}

pub fn run(a: CompletionsArgs, mut cmd: clap::Command) {
    clap_complete::generate(a.shell, &mut cmd, "lanpatch-signer", &mut std::io::stdout());
}
