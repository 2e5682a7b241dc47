//! Sites: which peers share this node's LAN and WAN link, and how a node says where it is.
//!
//! A node announces its site in its identify agent string (`lanpatch-node/0.1.0 site/berlin`).
//! The claim is unauthenticated, like everything a peer says about itself: a peer that lies about
//! its site can only change who fetches a chunk across which link, never what is installed (every
//! chunk is verified against the signed manifest). A peer whose agent string names no valid site
//! is put at the default site, as a node of a single-LAN fleet is.

use lanpatch_protocol::SiteName;
use serde::Deserialize;

/// Where a site's fetchers take chunks that nobody at the site holds yet.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Upstream {
    /// The manifest's origins first; other sites' peers when no origin is usable.
    #[default]
    Origin,
    /// Other sites' peers first; origins for what no other site holds.
    Peers,
}

/// Whether other nodes can dial this one.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Reachability {
    /// AutoNAT asks connected peers to dial this node back; when none can, it is private.
    #[default]
    Auto,
    /// Reachable: answers Kademlia queries, never reserves a relay slot.
    Public,
    /// Behind NAT or a firewall: reserves a slot on bootstrap peers that relay, and is reached
    /// through them (DCUtR then tries a direct connection).
    Private,
}

const SITE_TAG: &str = " site/";

/// The identify agent string of a node at `site`.
pub fn agent(site: &SiteName) -> String {
    format!("lanpatch-node/{}{SITE_TAG}{site}", crate::VERSION)
}

/// The site a peer's agent string names, if it names a valid one.
pub fn site_of(agent: &str) -> Option<SiteName> {
    let (_, site) = agent.rsplit_once(SITE_TAG)?;
    site.parse().ok()
}

/// The default site, where a peer that names none is put.
pub fn default_site() -> SiteName {
    SiteName::try_from("default".to_string()).unwrap_or_else(|_| unreachable!("a valid site name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_site_survives_the_agent_string_and_garbage_names_no_site() {
        let berlin: SiteName = "berlin".parse().unwrap();
        assert_eq!(site_of(&agent(&berlin)), Some(berlin));
        assert_eq!(site_of("rust-libp2p/0.48"), None);
        assert_eq!(site_of("lanpatch-node/1 site/Not A Site"), None);
        assert_eq!(site_of(&format!("x site/{}", "a".repeat(33))), None, "over the length limit");
        assert_eq!(site_of("lanpatch-node/1 site/"), None);
    }
}
