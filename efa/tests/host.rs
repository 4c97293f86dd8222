//! Host behaviour without any RDMA device: every failure is typed.

#[test]
fn opening_a_missing_device_is_a_typed_error() {
    match efa::Context::open("no-such-device-7f3a") {
        Err(efa::Error::NoSuchDevice { name }) => assert_eq!(name, "no-such-device-7f3a"),
        // Hosts without libibverbs at all.
        Err(e @ efa::Error::Library { .. }) => {
            let cause = std::error::Error::source(&e).expect("the loader's error is the cause");
            assert!(cause.to_string().contains("libibverbs"), "{cause}");
        }
        other => panic!("expected a typed error, got {other:?}"),
    }
}

#[test]
fn listing_devices_never_fails_for_lack_of_rdma() {
    match efa::devices() {
        Ok(list) => {
            let efa_only = efa::efa_devices().unwrap();
            assert!(efa_only.len() <= list.len());
            assert!(efa_only.iter().all(efa::DeviceInfo::is_efa));
        }
        Err(efa::Error::Library { .. }) => {}
        Err(e) => panic!("unexpected {e:?}"),
    }
}

#[test]
fn counters_of_a_missing_device_are_a_typed_error() {
    for name in ["no-such-device-7f3a", "../../../proc/self", ""] {
        match efa::hw_counters(name) {
            Err(efa::Error::NoSuchDevice { name: n }) => assert_eq!(n, name),
            other => panic!("{name:?}: expected NoSuchDevice, got {other:?}"),
        }
    }
}
