//! Ban flags of `jwtgate agent`: when a source that keeps failing token
//! verification is dropped in the kernel, and what is never banned
//! (docs/bans.md).

use std::time::Duration;

use clap::Args;

use crate::addrs::Cidr;
use crate::proxy::BanConfig;

#[derive(Args, Debug, Clone)]
pub struct BanArgs {
    /// Ban a source in the kernel after this many failed token verifications
    /// towards one workload within --ban-window-secs (0 disables banning).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub ban_after: u32,
    /// Window for --ban-after.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub ban_window_secs: u64,
    /// How long a banned source stays banned.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub ban_ttl_secs: u64,
    /// A ban covers only the workload that saw the failures; a source banned
    /// towards this many workloads (while those bans last) is banned from
    /// every workload on the node (0: never node-wide).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub ban_source_wide_after: usize,
    /// Sources never banned automatically, besides the node's own addresses:
    /// ingress gateways, load balancers, anything many clients share
    /// (repeatable, or comma-separated CIDRs).
    #[arg(long, value_name = "CIDR", value_delimiter = ',')]
    pub ban_exempt: Vec<Cidr>,
    /// Most (source, workload) failure counters kept in memory; failures of
    /// further sources are not counted until old windows expire.
    #[arg(long, value_name = "N", default_value_t = 65_536)]
    pub ban_track_max: usize,
}

impl BanArgs {
    pub fn config(&self) -> BanConfig {
        BanConfig {
            threshold: self.ban_after,
            window: Duration::from_secs(self.ban_window_secs),
            ttl: Duration::from_secs(self.ban_ttl_secs),
            source_wide_after: self.ban_source_wide_after,
            max_tracked: self.ban_track_max,
            exempt: self.ban_exempt.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bans: BanArgs,
    }

    #[test]
    fn defaults_match_the_policy_defaults_and_cidrs_parse() {
        let d = Cli::parse_from(["x"]).bans;
        assert_eq!(d.config(), BanConfig::default());
        let c = Cli::parse_from([
            "x",
            "--ban-exempt",
            "10.0.0.0/8,192.168.1.1",
            "--ban-exempt",
            "fd00::/8",
            "--ban-source-wide-after",
            "0",
        ])
        .bans
        .config();
        assert_eq!(c.exempt.len(), 3);
        assert!(c.exempt[1].contains("192.168.1.1".parse().unwrap()));
        assert_eq!(c.source_wide_after, 0);
        assert!(Cli::try_parse_from(["x", "--ban-exempt", "10.0.0.0/40"]).is_err());
    }
}
