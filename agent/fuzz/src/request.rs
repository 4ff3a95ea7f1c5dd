//! An owned request for the targets that build, keep or vary requests:
//! `authz::Request` borrows its strings (the proxy decides on hyper's own
//! header map), so a target holds the strings here and decides on `view()`.

use std::net::IpAddr;

use jwtgate::authz::Request;

#[derive(Debug, Clone)]
pub struct OwnedRequest {
    pub method: String,
    pub path: String,
    pub host: String,
    pub headers: Vec<(String, String)>,
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
}

impl OwnedRequest {
    pub fn view(&self) -> Request<'_> {
        Request {
            method: &self.method,
            path: &self.path,
            host: &self.host,
            headers: self
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect(),
            source_ip: self.source_ip,
            destination_ip: self.destination_ip,
            destination_port: self.destination_port,
        }
    }

    /// Bytes of the request's text (the allocation bound's input size).
    pub fn size(&self) -> usize {
        self.method.len()
            + self.path.len()
            + self.host.len()
            + self
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len())
                .sum::<usize>()
    }
}
