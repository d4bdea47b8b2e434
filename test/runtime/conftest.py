"""Fixtures for runtime tests: a fresh EmbeddedRuntime per test, isolated from other runs."""
import pytest

from qail_ros.runtime import set_runtime
from qail_ros.runtime import zenoh_transport as zt
from qail_ros.runtime.embedded import EmbeddedRuntime


@pytest.fixture
def zenoh_endpoint(monkeypatch):
    """A router endpoint on a random free port, so parallel test runs never meet."""
    endpoint = zt.free_endpoint()
    monkeypatch.setenv('QAIL_ROS_ZENOH_ROUTER', endpoint)
    monkeypatch.delenv('ROS_DOMAIN_ID', raising=False)
    return endpoint


@pytest.fixture
def runtime(monkeypatch):
    """An in-process-only runtime installed as the process runtime."""
    monkeypatch.setenv('QAIL_ROS_TRANSPORT', 'none')
    rt = EmbeddedRuntime()
    set_runtime(rt)
    rt.init([])
    yield rt
    rt.shutdown()
    set_runtime(None)


@pytest.fixture
def zenoh_runtime(zenoh_endpoint):
    """A runtime with the Zenoh transport on (no router unless the test starts one)."""
    rt = EmbeddedRuntime(transport='zenoh')
    set_runtime(rt)
    rt.init([])
    yield rt
    rt.shutdown()
    set_runtime(None)
