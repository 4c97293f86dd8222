//! The `efa` fabric on a host without EFA: construction fails with a typed error, never a panic.
#![cfg(feature = "rdma")]

use transport::fabric::efa::{EfaConfig, EfaFabric};
use transport::FabricError;

#[test]
fn bad_configuration_is_refused_by_value() {
    let e = EfaFabric::new(EfaConfig {
        qkey: 0x8000_0000,
        ..EfaConfig::default()
    })
    .unwrap_err();
    assert!(
        matches!(&e, FabricError::BadConfig { field: "qkey", value, .. } if value == "2147483648"),
        "{e}"
    );
}

#[test]
fn missing_devices_are_a_typed_error() {
    let has_efa = efa::efa_devices().map(|d| !d.is_empty()).unwrap_or(false);
    if has_efa {
        // On EFA hardware this test has nothing to show; the efa_hw_ tests run there.
        return;
    }
    let e = EfaFabric::new(EfaConfig::default()).unwrap_err();
    match &e {
        // libibverbs present, no EFA device.
        FabricError::NoDevice { fabric: "efa", .. } => {}
        // No libibverbs: the loader's error is kept as the cause.
        FabricError::Device {
            source: efa::Error::Library { .. },
            ..
        } => assert!(std::error::Error::source(&e).is_some()),
        other => panic!("expected a typed missing-device error, got {other:?}"),
    }
    let named = EfaFabric::new(EfaConfig {
        devices: vec!["rdmap-none".into()],
        ..EfaConfig::default()
    })
    .unwrap_err();
    assert!(named.to_string().contains("rdmap-none"), "{named}");
    assert!(
        matches!(
            &named,
            FabricError::Device {
                source: efa::Error::NoSuchDevice { .. } | efa::Error::Library { .. },
                ..
            }
        ),
        "{named:?}"
    );
}
