"""The CARLA adapter: lazy imports and a clear error without a server (127.0.0.1 only)."""
import socket
import sys

import pytest

from qail_ros.driving import carla_adapter


def test_no_client_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, 'carla', None)   # import carla -> ImportError
    with pytest.raises(carla_adapter.CarlaUnavailableError, match='pip install carla=='):
        carla_adapter.connect('127.0.0.1', 2000, timeout_s=0.5)


def test_no_server_fails_fast_with_a_clear_message():
    pytest.importorskip('carla', reason='the CARLA client (pip install carla) is not installed')
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]   # a free local port: nothing listens there
    with pytest.raises(carla_adapter.CarlaUnavailableError,
                       match=rf'no CARLA server reachable at 127\.0\.0\.1:{port}.*highway-env'):
        carla_adapter.make_env('regular', seed=0, town='Town01', host='127.0.0.1', port=port,
                               timeout_s=0.5)


def test_import_is_lazy():
    assert 'carla' not in carla_adapter.__dict__
    assert carla_adapter.TRAFFIC['Town01'] == {'empty': 0, 'regular': 20, 'dense': 100}
