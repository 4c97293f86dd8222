//! Choosing the metadata service from a Mooncake-style connection string
//! ([`MetadataSpec`]): peer-to-peer discovery or an etcd cluster. It lives here, beside the
//! peer-to-peer service, because it builds either; the metadata module stays below both.

use std::sync::Arc;

use super::{DiscoveryConfig, PeerMetadata};
use crate::metadata::{Metadata, MetadataError, MetadataSpec};

/// Builds the metadata service a connection string names, for engine `engine`: `P2P` binds a
/// [`PeerMetadata`] on loopback (build one with
/// [`PeerMetadata::bind`] to choose its address or
/// attach a fabric); `etcd://...` connects an `EtcdMetadata` with the default
/// `EtcdConfig` (`etcd` feature).
///
/// # Errors
///
/// [`MetadataError::BadSpec`] for a string [`MetadataSpec::parse`] refuses, or `etcd://` in a
/// build without the `etcd` feature; the service's own errors when it cannot start or reach
/// its servers.
pub fn connect(spec: &str, engine: &str) -> Result<Arc<dyn Metadata>, MetadataError> {
    match MetadataSpec::parse(spec)? {
        MetadataSpec::P2p => {
            let config = DiscoveryConfig::new(engine);
            Ok(PeerMetadata::bind(config)?)
        }
        MetadataSpec::Etcd { endpoints } => connect_etcd(spec, endpoints),
    }
}

#[cfg(feature = "etcd")]
fn connect_etcd(_spec: &str, endpoints: Vec<String>) -> Result<Arc<dyn Metadata>, MetadataError> {
    let config = crate::metadata::EtcdConfig::new(endpoints);
    Ok(Arc::new(crate::metadata::EtcdMetadata::connect(config)?))
}

#[cfg(not(feature = "etcd"))]
fn connect_etcd(spec: &str, _endpoints: Vec<String>) -> Result<Arc<dyn Metadata>, MetadataError> {
    Err(MetadataError::BadSpec {
        spec: spec.to_string(),
        reason: "this build of transport has no etcd support (cargo feature `etcd`)".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(not(feature = "etcd"))]
    #[test]
    fn etcd_without_the_feature_is_a_typed_error() {
        let e = connect("etcd://127.0.0.1:2379", "e").err().unwrap();
        assert!(matches!(e, MetadataError::BadSpec { .. }), "{e:?}");
    }

    #[test]
    fn p2p_binds_a_discovery_server() {
        let m = connect("P2P", "e").unwrap();
        assert!(matches!(
            m.lookup("nothing"),
            Err(MetadataError::NotFound(_))
        ));
    }
}
