"""Shared fixtures: a fresh EmbeddedRuntime per test, isolated from other runs and processes.

`runtime` (alias `rt`) is in-process only (QAIL_ROS_TRANSPORT=none); `zenoh_runtime` has the
Zenoh transport on, with `zenoh_endpoint` a router endpoint on a free port so parallel test
runs never meet. Each installs itself as the process runtime and is shut down afterwards.
"""
import contextlib
import os
import subprocess
import tempfile
from pathlib import Path

import pytest


@pytest.fixture
def zenoh_endpoint(monkeypatch):
    """A router endpoint on a random free port, so parallel test runs never meet."""
    from qail_ros.runtime import zenoh_transport as zt
    endpoint = zt.free_endpoint()
    monkeypatch.setenv('QAIL_ROS_ZENOH_ROUTER', endpoint)
    monkeypatch.delenv('ROS_DOMAIN_ID', raising=False)
    return endpoint


def _installed(rt):
    from qail_ros.runtime import set_runtime
    set_runtime(rt)
    rt.init([])
    try:
        yield rt
    finally:
        rt.shutdown()
        set_runtime(None)


@pytest.fixture
def runtime(monkeypatch):
    """A fresh in-process-only embedded runtime (no Zenoh), installed as the process runtime."""
    from qail_ros.runtime.embedded import EmbeddedRuntime
    monkeypatch.setenv('QAIL_ROS_TRANSPORT', 'none')
    yield from _installed(EmbeddedRuntime())


@pytest.fixture
def rt(runtime):
    """Short name for `runtime`."""
    return runtime


@pytest.fixture
def zenoh_runtime(zenoh_endpoint):
    """A runtime with the Zenoh transport on (no router unless the test starts one)."""
    from qail_ros.runtime.embedded import EmbeddedRuntime
    yield from _installed(EmbeddedRuntime(transport='zenoh'))


@contextlib.contextmanager
def _small_filesystem(megabytes: int):
    """A tmpfs of `megabytes` (a real ENOSPC); skips where this user may not mount one."""
    if os.geteuid() != 0:
        pytest.skip('mounting a small tmpfs needs root')
    path = tempfile.mkdtemp(prefix='qail_ros_small_fs_')
    done = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={megabytes}m', 'tmpfs', path],
                          capture_output=True, text=True)
    if done.returncode != 0:
        os.rmdir(path)
        pytest.skip(f'cannot mount a tmpfs here: {done.stderr.strip()}')
    try:
        yield Path(path)
    finally:
        subprocess.run(['umount', '-l', path], capture_output=True)
        with contextlib.suppress(OSError):
            os.rmdir(path)


@pytest.fixture
def small_filesystem():
    """`with small_filesystem(MB) as path:` a tmpfs of MB megabytes (real disk-full errors)."""
    return _small_filesystem
