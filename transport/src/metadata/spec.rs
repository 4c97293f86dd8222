//! Mooncake-style metadata connection strings: `P2P` (the default) or
//! `etcd://host:port[,host:port...]`.

use super::MetadataError;

/// A parsed metadata connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataSpec {
    /// Peer-to-peer discovery over TCP (`P2P`, `P2PHANDSHAKE`, case-insensitive, or empty).
    P2p,
    /// An etcd cluster: its client endpoints as `host:port`.
    Etcd {
        /// The endpoints, in the order given.
        endpoints: Vec<String>,
    },
}

impl MetadataSpec {
    /// Parses `spec`.
    ///
    /// # Errors
    ///
    /// [`MetadataError::BadSpec`] naming the string and what is wrong: an unknown scheme, no
    /// endpoint, an endpoint without a host or with a port that is not a number in 1..=65535.
    pub fn parse(spec: &str) -> Result<MetadataSpec, MetadataError> {
        let bad = |reason: String| MetadataError::BadSpec {
            spec: spec.to_string(),
            reason,
        };
        let s = spec.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("p2p") || s.eq_ignore_ascii_case("p2phandshake") {
            return Ok(MetadataSpec::P2p);
        }
        let Some(rest) = strip_prefix_ignore_case(s, "etcd://") else {
            return Err(bad(
                "expected \"P2P\" or \"etcd://host:port[,host:port]\"".into()
            ));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() {
            return Err(bad("no etcd endpoint".into()));
        }
        let endpoints = rest
            .split(',')
            .map(|ep| check_endpoint(ep.trim()).map_err(&bad))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MetadataSpec::Etcd { endpoints })
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Checks one `host:port` (IPv6 hosts in brackets).
fn check_endpoint(ep: &str) -> Result<String, String> {
    let Some((host, port)) = ep.rsplit_once(':') else {
        return Err(format!("endpoint {ep:?} has no port (expected host:port)"));
    };
    if host.is_empty() || host == "[]" || host.contains('/') {
        return Err(format!("endpoint {ep:?} has no valid host"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!("endpoint {ep:?}: an IPv6 host goes in brackets"));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(ep.to_string()),
        _ => Err(format!(
            "endpoint {ep:?}: port {port:?} is not in 1..=65535"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etcd(eps: &[&str]) -> MetadataSpec {
        MetadataSpec::Etcd {
            endpoints: eps.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn parses_p2p_and_etcd() {
        for s in ["", "P2P", "p2p", "P2PHANDSHAKE", " p2phandshake "] {
            assert_eq!(MetadataSpec::parse(s), Ok(MetadataSpec::P2p), "{s:?}");
        }
        assert_eq!(
            MetadataSpec::parse("etcd://127.0.0.1:2379"),
            Ok(etcd(&["127.0.0.1:2379"]))
        );
        assert_eq!(
            MetadataSpec::parse("ETCD://a:1, b:2,[::1]:3/"),
            Ok(etcd(&["a:1", "b:2", "[::1]:3"]))
        );
    }

    #[test]
    fn refuses_bad_strings_naming_them() {
        for (s, why) in [
            ("redis://a:1", "expected"),
            ("etcd://", "no etcd endpoint"),
            ("etcd://host", "no port"),
            ("etcd://:2379", "no valid host"),
            ("etcd://a:0", "not in 1..=65535"),
            ("etcd://a:99999", "not in 1..=65535"),
            ("etcd://a:1,,b:2", "no port"),
            ("etcd://::1:2379", "brackets"),
            ("etcd://a/b:1", "no valid host"),
        ] {
            let e = MetadataSpec::parse(s).unwrap_err();
            let MetadataError::BadSpec { spec, reason } = &e else {
                panic!("{s:?}: {e:?}");
            };
            assert_eq!(spec, s);
            assert!(reason.contains(why), "{s:?}: {reason}");
            assert!(e.to_string().contains(s), "{e}");
        }
    }
}
