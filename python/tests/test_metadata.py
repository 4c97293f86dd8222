"""Metadata connection strings: `etcd://host:port` reaches the etcd service (a build without the
`etcd` feature refuses it with a MetadataError naming the string); anything else unknown is a
ConfigError."""

import pytest

import efa_transport as et


def test_unknown_metadata_string_is_a_config_error():
    with pytest.raises(et.ConfigError, match="redis://x:1"):
        et.Engine("meta-a", "tcp", metadata="redis://x:1")


def test_etcd_string_reaches_the_etcd_service():
    # Without the feature: refused, naming the string. With it: nothing listens on port 1, so
    # connecting fails within the service's timeout, naming the endpoint.
    with pytest.raises(et.MetadataError, match="127.0.0.1:1"):
        et.Engine("meta-b", "tcp", metadata="etcd://127.0.0.1:1")
