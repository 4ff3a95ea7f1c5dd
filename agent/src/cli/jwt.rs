//! JWT flags of `jwtgate agent` (and the JWKS ones of `jwtgate check`):
//! JWKS fetching and the per-node verified-token cache.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args};

use crate::addrs::Cidr;
use crate::jwt::CacheConfig;
use crate::sources::jwks::JwksOptions;

/// How jwksUri documents are fetched.
#[derive(Args, Debug, Clone)]
pub struct JwksArgs {
    /// PEM file of extra CA certificates trusted for https jwksUri, on top
    /// of the system's trust store.
    #[arg(long, value_name = "FILE")]
    pub jwks_ca_file: Option<PathBuf>,
    /// On a token whose kid matches no key ("Jwks doesn't have key to match
    /// kid or alg from Jwt"), re-fetch the provider's jwksUri once before
    /// rejecting it (`--jwks-refetch-on-unknown-kid false` turns it off).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = ArgAction::Set)]
    pub jwks_refetch_on_unknown_kid: bool,
    /// At most one unknown-kid re-fetch per jwksUri in this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub jwks_refetch_min_interval_secs: u64,
    /// Let a jwksUri reach these addresses although they are refused by
    /// default — loopback, link-local (cloud metadata), other metadata
    /// addresses and the node's own (repeatable, or comma-separated CIDRs).
    #[arg(long, value_name = "CIDR", value_delimiter = ',')]
    pub jwks_allow_cidr: Vec<Cidr>,
    /// Upper bound on a rule's `timeout` for fetching its jwksUri.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub jwks_timeout_max_secs: u64,
}

impl JwksArgs {
    pub fn options(&self) -> JwksOptions {
        JwksOptions {
            ca_file: self.jwks_ca_file.clone(),
            refetch_on_unknown_kid: self.jwks_refetch_on_unknown_kid,
            refetch_min_interval: Duration::from_secs(self.jwks_refetch_min_interval_secs),
            allow: self.jwks_allow_cidr.clone(),
            max_timeout: Duration::from_secs(self.jwks_timeout_max_secs),
        }
    }
}

/// The agent's JWT flags: JWKS fetching plus the verified-token cache that
/// all workloads on the node share.
#[derive(Args, Debug, Clone)]
pub struct JwtArgs {
    #[command(flatten)]
    pub jwks: JwksArgs,
    /// Most verified tokens the node keeps (0 turns the cache off).
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub token_cache_entries: usize,
    /// Most memory (bytes, estimated) the verified tokens may take.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024 * 1024)]
    pub token_cache_bytes: u64,
    /// How long a token whose signature check failed is answered from memory
    /// (0 turns the negative cache off).
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub token_cache_negative_secs: u64,
    /// Most failed tokens remembered.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub token_cache_negative_entries: usize,
    /// Most memory (bytes) the failed tokens may take.
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024 * 1024)]
    pub token_cache_negative_bytes: u64,
}

impl JwtArgs {
    pub fn cache_config(&self) -> CacheConfig {
        CacheConfig {
            max_entries: self.token_cache_entries,
            max_bytes: self.token_cache_bytes,
            negative_ttl_secs: self.token_cache_negative_secs,
            negative_max_entries: self.token_cache_negative_entries,
            negative_max_bytes: self.token_cache_negative_bytes,
            ..CacheConfig::default()
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
        jwt: JwtArgs,
    }

    #[test]
    fn defaults_and_switches() {
        let d = Cli::parse_from(["x"]).jwt;
        assert!(d.jwks.jwks_refetch_on_unknown_kid);
        assert_eq!(d.cache_config(), CacheConfig::default());
        let o = d.jwks.options();
        let dflt = JwksOptions::default();
        assert_eq!((o.allow, o.max_timeout), (dflt.allow, dflt.max_timeout));
        let c = Cli::parse_from([
            "x",
            "--jwks-refetch-on-unknown-kid",
            "false",
            "--token-cache-entries",
            "5",
            "--jwks-ca-file",
            "/ca.pem",
            "--jwks-allow-cidr",
            "127.0.0.1,fd00::/8",
            "--jwks-timeout-max-secs",
            "3",
        ])
        .jwt;
        let o = c.jwks.options();
        assert_eq!(o.allow.len(), 2);
        assert_eq!(o.max_timeout, Duration::from_secs(3));
        assert!(!c.jwks.options().refetch_on_unknown_kid);
        assert_eq!(c.cache_config().max_entries, 5);
        assert_eq!(c.jwks.options().ca_file, Some(PathBuf::from("/ca.pem")));
    }
}
