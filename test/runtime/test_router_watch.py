"""A node's transport warns when the Zenoh router goes away and says when it is back; the
router helpers tell a Zenoh router from another program holding its port."""
import logging
import socket

import pytest

from qail_ros.errors import TransportError
from qail_ros.runtime import zenoh_transport as zt

pytest.importorskip('zenoh', reason='eclipse-zenoh is not installed')


def test_router_lost_and_back_are_logged(zenoh_endpoint, caplog):
    router = zt.ensure_router(zenoh_endpoint)
    transport = zt.ZenohTransport(warn=False)
    try:
        assert transport.router_connected and transport.router_losses == 0
        with caplog.at_level(logging.WARNING, logger='qail_ros.runtime.zenoh'):
            router.stop()
            assert _wait(lambda: not transport.router_connected, 10.0)
            assert transport.router_losses == 1
            assert any('lost the Zenoh router' in r.getMessage() and zenoh_endpoint in
                       r.getMessage() for r in caplog.records)
            router = zt.ensure_router(zenoh_endpoint)
            assert _wait(lambda: transport.router_connected, 20.0)
            assert any('Zenoh router is back' in r.getMessage() for r in caplog.records)
    finally:
        transport.close()
        if router is not None:
            router.stop()


def test_check_router_tells_a_zenoh_router_from_another_program(zenoh_endpoint):
    router = zt.ensure_router(zenoh_endpoint)
    try:
        zid = zt.check_router(zenoh_endpoint)
        assert len(zid) >= 16 and zt.ensure_router(zenoh_endpoint) is None
    finally:
        router.stop()
    with socket.socket() as holder:
        holder.bind(('127.0.0.1', 0))
        holder.listen(4)
        port = holder.getsockname()[1]
        endpoint = f'tcp/127.0.0.1:{port}'
        assert zt.router_reachable(endpoint) and zt.probe_router(endpoint, 1.0) is None
        import os
        assert zt.port_holder(port).startswith(f'pid {os.getpid()} (')
        with pytest.raises(TransportError, match=f'port {port} .* does not answer as a Zenoh'):
            zt.ensure_router(endpoint)
        from qail_ros.cli import main
        assert main(['router', '--listen', endpoint]) == 2   # qail-ros router says so too


def _wait(predicate, timeout_s):
    import time
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
