//! Memory is bounded under any input (docs/memory.md): a flood of distinct
//! forged tokens of maximal size — as large as the 60 KiB request-header
//! limit allows, shaped to parse into as much memory as possible — goes
//! through the real agent with its default bounds, bans switched off so
//! nothing cuts the flood short. The agent's peak RSS must stay under the
//! documented ceiling, far inside the DaemonSet's 512 MiB limit, and the
//! caches must report sizes within their bounds.
//!
//! The failed-token cache used to be bounded by count alone (10 000), each
//! entry holding the whole token and its parsed payload: this very flood
//! then drove the agent to 823 MiB, past the DaemonSet's limit.

use std::thread;

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jwtgate_e2e::faq::{FaqBed, ISSUER};
use jwtgate_e2e::{privileged, AgentOptions, Request};

/// docs/memory.md: peak RSS under a forged-token flood, default flags.
const RSS_CEILING_MIB: u64 = 128;
/// The request-header limit (issue "Envoy-exact requests"), less room for
/// the request line, Host and the `Authorization: Bearer ` prefix.
const TOKEN_BYTES: usize = 60 * 1024 - 512;
const TOKENS: usize = 1_000;
const CONNECTIONS: usize = 8;
/// `kid` of the Istio sample JWKS the bed serves: a forged token must name
/// a real key to reach the signature check (and the failed-token cache).
const KID: &str = "DHFbpoIUqrY8t2zpA2qXfCmr5VO5ZEr4RzHU_-envvQ";

/// A distinct forged RS256 token of `TOKEN_BYTES`: valid issuer, far `exp`,
/// a payload that parses into the most memory (thousands of one-letter
/// audiences, or one long string), and a signature of random-looking bytes.
fn forged(i: usize) -> String {
    let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"RS256","kid":"{KID}"}}"#));
    let signature = URL_SAFE_NO_PAD.encode([(i % 251) as u8; 256]);
    let room = (TOKEN_BYTES - header.len() - signature.len() - 2) * 3 / 4;
    let head = format!(r#"{{"iss":"{ISSUER}","sub":"flood","exp":4102444800,"jti":"{i:08}""#);
    let body = if i.is_multiple_of(2) {
        let n = (room - head.len() - 10) / 4;
        format!(r#"{head},"aud":[{}]}}"#, vec![r#""a""#; n].join(","))
    } else {
        let n = room - head.len() - 12;
        format!(r#"{head},"pad":"{}"}}"#, "x".repeat(n))
    };
    let token = format!("{header}.{}.{signature}", URL_SAFE_NO_PAD.encode(body));
    assert!(token.len() <= TOKEN_BYTES, "{}", token.len());
    token
}

/// `VmRSS` and `VmHWM` (peak) of `pid`, in KiB.
fn rss_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

fn metric(text: &str, name: &str) -> Result<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .with_context(|| format!("no {name} in /metrics"))
}

#[test]
fn forged_token_flood_keeps_rss_under_the_ceiling() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build("mem-flood")?;
    bed.node.start_agent(&AgentOptions {
        extra_args: vec!["--ban-after".into(), "0".into()],
        ..AgentOptions::default()
    })?;
    let agent = bed.node.agent().context("agent running")?;
    let pid = agent.pid().context("agent pid")?;
    let (rss_before, _) = rss_kib(pid)?;
    let addr = bed.pod.mesh_addr();

    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|w| {
            let client = bed.client.clone();
            thread::spawn(move || -> Result<usize> {
                let mut conn = client
                    .connect(addr)
                    .map_err(|o| anyhow::anyhow!("connecting: {o}"))?;
                let mut denied = 0;
                for i in (w..TOKENS).step_by(CONNECTIONS) {
                    let req = Request::get("/productpage").bearer(Some(&forged(i)));
                    let r = conn.send(&req)?;
                    if r.status != 401 {
                        bail!("forged token {i}: {} {}", r.status, r.text());
                    }
                    denied += 1;
                }
                Ok(denied)
            })
        })
        .collect();
    let mut denied = 0;
    for w in workers {
        denied += w.join().expect("flood thread panicked")?;
    }
    assert_eq!(denied, TOKENS);

    let (rss_after, peak) = rss_kib(pid)?;
    eprintln!(
        "RSS before {} MiB, after {} MiB, peak {} MiB (ceiling {RSS_CEILING_MIB} MiB)",
        rss_before / 1024,
        rss_after / 1024,
        peak / 1024,
    );
    assert!(
        peak < RSS_CEILING_MIB * 1024,
        "peak RSS {} MiB over the {RSS_CEILING_MIB} MiB ceiling\n{}",
        peak / 1024,
        bed.node.agent_log()
    );
    let metrics = agent.metrics()?;
    eprintln!(
        "failed-token cache: {} entries, {} bytes",
        metric(&metrics, "jwtgate_token_cache_negative_entries")?,
        metric(&metrics, "jwtgate_token_cache_negative_bytes")?,
    );
    // The flood really reached the failed-token cache and filled it.
    let negative_bytes = metric(&metrics, "jwtgate_token_cache_negative_bytes")?;
    let negative_max = metric(&metrics, "jwtgate_token_cache_negative_max_bytes")?;
    assert!(negative_bytes <= negative_max);
    assert!(metric(&metrics, "jwtgate_token_cache_evictions_total")? > 0);
    assert!(
        metric(&metrics, "jwtgate_token_cache_bytes")?
            <= metric(&metrics, "jwtgate_token_cache_max_bytes")?
    );
    assert_eq!(
        metric(
            &metrics,
            "jwtgate_jwt_verifications_total{alg=\"RS256\",result=\"failure\"}"
        )?,
        TOKENS as u64,
        "every distinct forged token was verified once"
    );
    Ok(())
}

#[test]
fn agent_raises_its_open_files_limit() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build("nofile")?;
    bed.start_agent()?;
    let agent = bed.node.agent().context("agent running")?;
    let pid = agent.pid().context("agent pid")?;
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no open files line")?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (soft, hard) = (fields[3], fields[4]);
    assert_eq!(soft, hard, "{line}");
    assert_eq!(
        metric(&agent.metrics()?, "jwtgate_open_files_limit")?.to_string(),
        soft
    );
    assert!(
        bed.node.agent_log().contains("RLIMIT_NOFILE"),
        "the log says what the limit is\n{}",
        bed.node.agent_log()
    );
    Ok(())
}
