//! What the CNI plugin and the agent say to each other: one JSON line each
//! way per connection.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Sent by the plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// `ADD` or `DEL`.
    pub command: String,
    pub pod_namespace: String,
    pub pod_name: String,
    /// Empty when the runtime does not pass `K8S_POD_UID`.
    pub pod_uid: String,
    /// The pod's network namespace, as the runtime names it (`CNI_NETNS`).
    pub netns: PathBuf,
    /// The pod's addresses, from the previous plugin's result.
    pub ips: Vec<IpAddr>,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reply {
    /// The pod is enrolled: its traffic goes through the verifier.
    pub protected: bool,
    /// Why the pod cannot start (the ADD fails), if it cannot.
    pub error: Option<String>,
    /// A word on what happened, for the runtime's logs.
    pub detail: String,
}

impl Reply {
    pub fn ok(protected: bool, detail: impl Into<String>) -> Reply {
        Reply {
            protected,
            error: None,
            detail: detail.into(),
        }
    }

    pub fn error(error: impl Into<String>) -> Reply {
        let error = error.into();
        Reply {
            protected: false,
            detail: error.clone(),
            error: Some(error),
        }
    }
}
