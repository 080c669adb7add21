"""`kv.host: auto`: a worker's KV receivers listen on, and advertise, the address Ray knows its node by."""

from orchestrator.config import KVTransferConfig
from workers.actor import kv_host


def test_the_default_is_auto():
    assert KVTransferConfig().host == "auto"


def test_auto_outside_ray_is_loopback_and_an_explicit_address_is_kept():
    assert kv_host("auto") == "127.0.0.1"  # no Ray in this process
    assert kv_host("10.88.0.3") == "10.88.0.3"
