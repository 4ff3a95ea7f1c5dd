//! Access-log flags of `jwtgate agent` (`access_log/`).

use clap::{ArgAction, Args};

use crate::access_log::AccessLogConfig;
use crate::telemetry::LogFormat;

#[derive(Args, Debug, Clone)]
pub struct AccessLogArgs {
    /// Write one access-log line (stdout) per denied request or connection.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = ArgAction::Set)]
    pub access_log_denied: bool,
    /// Fraction of allowed requests and connections to log, spread evenly:
    /// 0 logs none, 1 all, 0.01 one in a hundred.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.0, value_parser = parse_fraction)]
    pub access_log_allowed_sample: f64,
    /// Most access-log lines per second; more are counted in
    /// jwtgate_access_log_suppressed_total instead (0: no limit).
    #[arg(long, value_name = "LINES", default_value_t = 1000)]
    pub access_log_max_rate: u32,
    /// Denials kept in memory for /debug/denials and `jwtgate explain`.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub recent_denials: usize,
}

impl AccessLogArgs {
    /// Lines are JSON when the agent's logs are.
    pub fn config(&self, format: LogFormat) -> AccessLogConfig {
        AccessLogConfig {
            denied: self.access_log_denied,
            allowed_sample: self.access_log_allowed_sample,
            max_rate: self.access_log_max_rate,
            json: format == LogFormat::Json,
            recent_denials: self.recent_denials,
        }
    }
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{s:?} is not a fraction between 0 and 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_outside_zero_to_one_are_refused() {
        assert_eq!(parse_fraction("0.25"), Ok(0.25));
        assert_eq!(parse_fraction("1"), Ok(1.0));
        assert!(parse_fraction("1.5").is_err());
        assert!(parse_fraction("-0.1").is_err());
        assert!(parse_fraction("NaN").is_err());
    }
}
