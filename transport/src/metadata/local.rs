//! The in-process registry.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use super::{Metadata, MetadataError};
use crate::descriptor::SegmentDescriptor;

/// An in-process registry. Descriptors are stored in their encoded form, so everything that
/// passes through it also passes through the codec, as it would over a network.
#[derive(Debug, Default)]
pub struct LocalRegistry {
    entries: Mutex<HashMap<String, (String, Vec<u8>)>>,
}

impl LocalRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of published descriptors.
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether nothing is published.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Metadata for LocalRegistry {
    fn publish(&self, desc: &SegmentDescriptor) -> Result<(), MetadataError> {
        let bytes = desc.encode().map_err(|source| MetadataError::Corrupt {
            name: desc.name.clone(),
            source,
        })?;
        let mut map = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((owner, _)) = map.get(&desc.name) {
            if owner != &desc.engine {
                return Err(MetadataError::Conflict {
                    name: desc.name.clone(),
                    owner: owner.clone(),
                });
            }
        }
        map.insert(desc.name.clone(), (desc.engine.clone(), bytes));
        Ok(())
    }

    fn lookup(&self, name: &str) -> Result<SegmentDescriptor, MetadataError> {
        let map = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let (_, bytes) = map
            .get(name)
            .ok_or_else(|| MetadataError::NotFound(name.to_string()))?;
        SegmentDescriptor::decode(bytes).map_err(|source| MetadataError::Corrupt {
            name: name.to_string(),
            source,
        })
    }

    fn remove(&self, name: &str) -> Result<bool, MetadataError> {
        let mut map = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(map.remove(name).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Access, Location};

    fn desc(name: &str, engine: &str, rev: u64) -> SegmentDescriptor {
        SegmentDescriptor {
            revision: rev,
            name: name.into(),
            fabric: "sim".into(),
            engine: engine.into(),
            location: Location::Cpu(0),
            access: Access::REMOTE_READ,
            base: 4096,
            len: 10,
            rails: vec![],
            alternates: vec![],
        }
    }

    #[test]
    fn publish_lookup_remove() {
        let reg = LocalRegistry::new();
        assert_eq!(reg.lookup("a"), Err(MetadataError::NotFound("a".into())));
        reg.publish(&desc("a", "e1", 1)).unwrap();
        assert_eq!(reg.lookup("a").unwrap(), desc("a", "e1", 1));
        reg.publish(&desc("a", "e1", 2)).unwrap();
        assert_eq!(reg.lookup("a").unwrap().revision, 2);
        assert!(matches!(
            reg.publish(&desc("a", "e2", 9)),
            Err(MetadataError::Conflict { .. })
        ));
        assert!(reg.remove("a").unwrap());
        assert!(!reg.remove("a").unwrap());
        assert!(reg.is_empty());
    }
}
