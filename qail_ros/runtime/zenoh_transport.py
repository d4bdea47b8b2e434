"""Inter-process / inter-machine transport of the embedded runtime, on Zenoh.

The wire layout follows rmw_zenoh (ros2/rmw_zenoh, rmw_zenoh_cpp/src/detail/), so that a
robot running `RMW_IMPLEMENTATION=rmw_zenoh_cpp` can in principle be reached. Interop with a
real rmw_zenoh robot is untested until someone tries it; see docs/runtime.md.

* Data key expression (liveliness_utils.cpp, TopicInfo):
  `<domain_id>/<topic without leading/trailing slash>/<pkg>::msg::dds_::<Type>_/<RIHS01 hash>`.
* Payload: CDR with its 4-byte encapsulation header (`qail_ros.messages.serialize`).
* Attachment (attachment_helpers.cpp, AttachmentData::serialize_to_zbytes): zenoh-ext
  serialisation of `int64 sequence_number` (from 1), `int64 source_timestamp` (system clock,
  ns) and `std::array<uint8_t, 16> gid`, which zenoh-cpp writes with a LEB128 length prefix:
  8 + 8 + 1 + 16 = 33 bytes, little endian.
* Liveliness tokens (Entity::Entity): `@ros2_lv/<domain>/<zid>/<nid>/<id>/<NN|MP|MS>/<enclave>/
  <namespace>/<node>[/<topic>/<type>/<hash>/<qos>]`, `/` inside names mangled to `%`, QoS as
  `qos_to_keyexpr` writes it (fields equal to rmw_zenoh's defaults left empty).
* GID: XXH3-128 of the liveliness key expression, low 64 bits then high 64 bits, little endian.
* transient_local: zenoh-ext advanced publisher (cache of `depth`) / advanced subscriber
  (history, late-publisher detection), as rmw_publisher_data.cpp / rmw_subscription_data.cpp.
* Large payloads (>= 64 KiB) are put from a Zenoh shared-memory buffer (local peers map it;
  Zenoh copies it for others), which shortens the latency tail of camera images.
* Session: peer mode, multicast scouting off, gossip scouting on, connect to a router at
  tcp/127.0.0.1:7447 (rmw_zenoh's default; `QAIL_ROS_ZENOH_ROUTER` overrides it), listen on an
  ephemeral localhost port so that peers link directly after the router introduced them.
  `ROS_DOMAIN_ID` selects the domain. As in rmw_zenoh (zenoh_config.cpp), a JSON5 file named by
  `ZENOH_SESSION_CONFIG_URI` (`ZENOH_ROUTER_CONFIG_URI` for the router) replaces these
  defaults, `ZENOH_CONFIG_OVERRIDE` applies on top: TLS, mutual TLS and access control
  (config/secure, docs/security.md) come through these files.
* Router check and watch: `check_router` tells a Zenoh router from another program holding the
  port (naming it); each transport logs when its router goes away and when it is back.

Router: `qail-ros router` (or `ensure_router()`) runs a Zenoh router in Python: zenoh-python
opens a session with `mode: "router"`, which is the same router code zenohd runs, without the
zenohd plugins (no REST / storage), which ROS graphs do not need. Without a router config file
it listens on this host only (rmw_zenohd listens on every interface): docs/security.md.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable

from qail_ros.errors import TransportError
from qail_ros import messages as _messages
from qail_ros.messages import normalize_type, type_hash
from qail_ros.runtime.logs import RosFormatter, StderrHandler

if TYPE_CHECKING:
    from zenoh import ext as zenoh_ext
    from zenoh import shm as zenoh_shm

__all__ = [
    'DEFAULT_ROUTER', 'ADMIN_SPACE', 'domain_id', 'router_endpoint', 'ros_type_name',
    'topic_keyexpr', 'qos_to_keyexpr', 'mangle', 'demangle', 'liveliness_keyexpr',
    'parse_liveliness_keyexpr', 'gid_from_keyexpr', 'encode_attachment', 'decode_attachment',
    'session_config', 'router_config', 'router_reachable', 'ensure_router', 'RouterHandle',
    'run_router', 'free_endpoint', 'private_router', 'ZenohTransport', 'GraphEntity',
    'probe_router', 'check_router', 'port_holder', 'router_listen_endpoints',
    'SESSION_CONFIG_ENV', 'ROUTER_CONFIG_ENV', 'CONFIG_OVERRIDE_ENV',
]

log = logging.getLogger('qail_ros.runtime.zenoh')


def _ensure_log_handler() -> None:
    """Print transport warnings ROS-style on stderr unless the application set up logging."""
    if not log.handlers and not logging.getLogger().handlers:
        handler = StderrHandler()
        handler.setFormatter(RosFormatter('qail_ros.zenoh'))
        log.addHandler(handler)


#: Payloads from this size on go through a shared-memory buffer (see ZenohTransport.shm_copy).
SHM_MIN_BYTES = 64 * 1024


def _shm_megabytes() -> int:
    text = os.environ.get('QAIL_ROS_ZENOH_SHM_MB', '').strip()
    try:
        return int(text) if text else 64
    except ValueError:
        raise TransportError(f"QAIL_ROS_ZENOH_SHM_MB must be an integer (0 = off), not "
                             f"'{text}'") from None


#: rmw_zenoh's default router endpoint (zenohd started by `ros2 run rmw_zenoh_cpp rmw_zenohd`).
DEFAULT_ROUTER = 'tcp/127.0.0.1:7447'
ADMIN_SPACE = '@ros2_lv'
ENTITY_NODE, ENTITY_PUB, ENTITY_SUB = 'NN', 'MP', 'MS'
GID_SIZE = 16

# rmw QoS enum values (rmw/types.h) and rmw_zenoh's defaults (qos.cpp).
_RELIABILITY = {'reliable': 1, 'best_effort': 2}
_DURABILITY = {'transient_local': 1, 'volatile': 2}
_HISTORY = {'keep_last': 1, 'keep_all': 2}
_DEFAULT = {'reliability': 1, 'durability': 2, 'history': 1, 'depth': 42}


# ------------------------------------------------------------------------------------------
# configuration from the environment
# ------------------------------------------------------------------------------------------
def domain_id() -> int:
    """ROS_DOMAIN_ID (default 0), as rmw_zenoh uses it: the first key expression chunk."""
    text = os.environ.get('ROS_DOMAIN_ID', '').strip()
    if not text:
        return 0
    try:
        value = int(text)
    except ValueError:
        raise TransportError(f"ROS_DOMAIN_ID must be an integer, not '{text}'") from None
    if value < 0:
        raise TransportError(f'ROS_DOMAIN_ID must be >= 0, not {value}')
    return value


# ------------------------------------------------------------------------------------------
# names and key expressions (rmw_zenoh layout)
# ------------------------------------------------------------------------------------------
def ros_type_name(msgtype: str) -> str:
    """'sensor_msgs/msg/Image' -> 'sensor_msgs::msg::dds_::Image_' (the rosidl C++ DDS name)."""
    pkg, kind, name = normalize_type(msgtype).split('/')
    return f'{pkg}::{kind}::dds_::{name}_'


def msgtype_from_ros_type_name(name: str) -> str:
    """Inverse of `ros_type_name` ('pkg::msg::dds_::Name_' -> 'pkg/msg/Name')."""
    parts = name.split('::')
    if len(parts) == 4 and parts[2] == 'dds_' and parts[3].endswith('_'):
        return f'{parts[0]}/{parts[1]}/{parts[3][:-1]}'
    return name.replace('::', '/')


def topic_keyexpr(domain: int, topic: str, msgtype: str, thash: str | None = None) -> str:
    """The key expression data of `topic` travels on."""
    return (f'{domain}/{topic.strip("/")}/{ros_type_name(msgtype)}/'
            f'{thash or type_hash(msgtype)}')


def qos_to_keyexpr(qos) -> str:
    """rmw_zenoh's QoS encoding: `rel:dur:hist,depth:deadline:lifespan:liveliness` where a field
    equal to rmw_zenoh's default is left empty (qail_ros QoS has no deadline / lifespan /
    liveliness settings, so those are always the defaults)."""
    rel = _RELIABILITY[qos.reliability]
    dur = _DURABILITY[qos.durability]
    hist = _HISTORY[qos.history]
    depth = qos.depth or _DEFAULT['depth']

    def field(value: int, key: str) -> str:
        return '' if value == _DEFAULT[key] else str(value)

    return (f"{field(rel, 'reliability')}:{field(dur, 'durability')}:"
            f"{field(hist, 'history')},{field(depth, 'depth')}:,:,:,,")


def mangle(name: str) -> str:
    return name.replace('/', '%')


def demangle(name: str) -> str:
    return name.replace('%', '/')


def liveliness_keyexpr(domain: int, zid: str, nid: int, eid: int, kind: str, namespace: str,
                       node: str, enclave: str = '/', topic: str | None = None,
                       msgtype: str | None = None, thash: str | None = None,
                       qos=None) -> str:
    """The key of a liveliness token announcing a node (NN), publisher (MP) or subscription (MS).
    """
    parts = [ADMIN_SPACE, str(domain), zid, str(nid), str(eid), kind, mangle(enclave or '/'),
             mangle(namespace or '/'), mangle(node)]
    if topic is not None:
        if msgtype is None:
            raise ValueError(f'liveliness_key: topic {topic} needs its msgtype')
        parts += [mangle(topic), mangle(ros_type_name(msgtype)),
                  mangle(thash or type_hash(msgtype)), qos_to_keyexpr(qos)]
    return '/'.join(parts)


class GraphEntity(tuple):
    """A parsed liveliness token: (kind, zid, namespace, node, topic, msgtype, type_hash, qos)."""

    __slots__ = ()
    kind = property(lambda self: self[0])
    zid = property(lambda self: self[1])
    namespace = property(lambda self: self[2])
    node = property(lambda self: self[3])
    topic = property(lambda self: self[4])
    msgtype = property(lambda self: self[5])
    type_hash = property(lambda self: self[6])
    qos = property(lambda self: self[7])


def parse_liveliness_keyexpr(key: str) -> GraphEntity | None:
    """Parse a `@ros2_lv/...` key; None if it is not a well-formed rmw_zenoh token."""
    parts = str(key).split('/')
    if len(parts) < 9 or parts[0] != ADMIN_SPACE or any(p == '' for p in parts[:9]):
        return None
    kind = parts[5]
    if kind == ENTITY_NODE:
        return GraphEntity((kind, parts[2], demangle(parts[7]), demangle(parts[8]), None, None,
                            None, None))
    if len(parts) < 13:
        return None
    return GraphEntity((kind, parts[2], demangle(parts[7]), demangle(parts[8]),
                        demangle(parts[9]), msgtype_from_ros_type_name(demangle(parts[10])),
                        demangle(parts[11]), parts[12]))


def gid_from_keyexpr(keyexpr: str) -> bytes:
    """rmw_zenoh's 16-byte GID of an entity: XXH3-128 of its liveliness key expression, stored
    as the low 64 bits then the high 64 bits, each little endian."""
    try:
        import xxhash
    except ImportError:  # same length and stability, not rmw_zenoh's value
        global _warned_xxhash
        if not _warned_xxhash:
            _warned_xxhash = True
            log.warning('xxhash is not installed (pip install xxhash): GIDs are BLAKE2b-based '
                        'instead of rmw_zenoh\'s XXH3; topics still work')
        import hashlib
        return hashlib.blake2b(keyexpr.encode(), digest_size=16).digest()
    return xxhash.xxh3_128_intdigest(keyexpr.encode()).to_bytes(16, 'little')


_warned_xxhash = False


def cdr_payload(msg: Any) -> bytes | bytearray:
    """CDR of `msg` (what `messages.serialize` returns) without its final copy: rosbags fills a
    fresh bytearray, which Zenoh copies anyway (copying 1 MB twice costs ~1 ms here)."""
    view = _messages.typestore().serialize_cdr(msg, msg.__msgtype__)
    obj = view.obj
    if isinstance(obj, (bytes, bytearray)) and len(obj) == view.nbytes:
        return obj
    return bytes(view)


def _leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_ATTACH_HEAD = struct.Struct('<qq')
_GID_PREFIX = _leb128(GID_SIZE)


def encode_attachment(sequence_number: int, source_timestamp_ns: int, gid: bytes) -> bytes:
    """The 33-byte rmw_zenoh attachment (zenoh-ext serialisation of int64, int64, uint8[16])."""
    if len(gid) != GID_SIZE:
        raise ValueError(f'a GID has {GID_SIZE} bytes, not {len(gid)}')
    return _ATTACH_HEAD.pack(sequence_number, source_timestamp_ns) + _GID_PREFIX + gid


def decode_attachment(data: bytes) -> tuple[int, int, bytes]:
    """(sequence_number, source_timestamp_ns, gid) from an rmw_zenoh attachment."""
    if len(data) != 33 or data[16:17] != _GID_PREFIX:
        raise ValueError(f'not an rmw_zenoh attachment ({len(data)} bytes)')
    seq, stamp = _ATTACH_HEAD.unpack_from(data)
    return seq, stamp, bytes(data[17:33])


# ------------------------------------------------------------------------------------------
# session / router configuration (as rmw_zenoh reads it)
# ------------------------------------------------------------------------------------------
#: rmw_zenoh's variables: a JSON5 Zenoh configuration file for every node's session / for the
#: router, and `key=value;key=value` overrides applied on top (rmw_zenoh_cpp zenoh_config.cpp).
SESSION_CONFIG_ENV = 'ZENOH_SESSION_CONFIG_URI'
ROUTER_CONFIG_ENV = 'ZENOH_ROUTER_CONFIG_URI'
CONFIG_OVERRIDE_ENV = 'ZENOH_CONFIG_OVERRIDE'


def _config_file(env: str):
    """zenoh.Config read from the file `env` names, or None when `env` is unset / empty."""
    path = os.environ.get(env, '').strip()
    if not path:
        return None
    import zenoh
    if not os.path.isfile(path):
        raise TransportError(f"{env}='{path}': no such file; point it at a Zenoh JSON5 "
                             'configuration file, or unset it for the defaults')
    try:
        return zenoh.Config.from_file(path)
    except Exception as exc:  # zenoh raises ZError
        raise TransportError(f"{env}='{path}' is not a valid Zenoh configuration: {exc}") \
            from None


def _apply_overrides(conf) -> None:
    """ZENOH_CONFIG_OVERRIDE='mode="client";connect/endpoints=["tcp/10.0.0.2:7447"]'."""
    text = os.environ.get(CONFIG_OVERRIDE_ENV, '').strip()
    for item in filter(None, (part.strip() for part in text.split(';'))):
        key, sep, value = item.partition('=')
        if not sep or not key.strip():
            raise TransportError(f"{CONFIG_OVERRIDE_ENV}: '{item}' is not key=value (e.g. "
                                 'connect/endpoints=["tcp/10.0.0.2:7447"])')
        try:
            conf.insert_json5(key.strip(), value.strip())
        except Exception as exc:  # zenoh raises ZError
            raise TransportError(f"{CONFIG_OVERRIDE_ENV}: cannot set '{key.strip()}' to "
                                 f'{value.strip()}: {exc}') from None


def _endpoints(conf, key: str) -> list[str]:
    """A config's connect/listen endpoints (a list, or a per-mode dict: this config's mode)."""
    value = json.loads(conf.get_json(f'{key}/endpoints') or '[]')
    if isinstance(value, dict):
        mode = json.loads(conf.get_json('mode') or '"peer"') or 'peer'
        value = value.get(mode, [])
    return [str(v) for v in value or []]


def router_endpoint() -> str:
    """The router this process connects to: QAIL_ROS_ZENOH_ROUTER, else the first connect
    endpoint of ZENOH_SESSION_CONFIG_URI's file, else tcp/127.0.0.1:7447."""
    explicit = os.environ.get('QAIL_ROS_ZENOH_ROUTER', '').strip()
    if explicit:
        return explicit
    conf = _config_file(SESSION_CONFIG_ENV)
    if conf is not None:
        _apply_overrides(conf)
        found = _endpoints(conf, 'connect')
        if found:
            return found[0]
    return DEFAULT_ROUTER


def session_config(router: str | None = None, listen: str | None = None):
    """zenoh.Config of a qail_ros (and rmw_zenoh-like) session.

    With ZENOH_SESSION_CONFIG_URI set: that file (TLS, access control, client mode: whatever
    it says), its connect endpoint replaced only by an explicit `router` or
    QAIL_ROS_ZENOH_ROUTER. Unset: rmw_zenoh's session defaults (peer mode, connect to the
    router on this host, listen on localhost only, multicast scouting off, gossip on), with
    scouting/delay 0 (no multicast to wait for). ZENOH_CONFIG_OVERRIDE applies last.
    """
    import zenoh
    conf = _config_file(SESSION_CONFIG_ENV)
    explicit = router or os.environ.get('QAIL_ROS_ZENOH_ROUTER', '').strip()
    if conf is None:
        conf = zenoh.Config()
        conf.insert_json5('mode', '"peer"')
        conf.insert_json5('connect/endpoints', json.dumps([explicit or DEFAULT_ROUTER]))
        conf.insert_json5('listen/endpoints', json.dumps([listen or 'tcp/127.0.0.1:0']))
        conf.insert_json5('scouting/multicast/enabled', 'false')
        conf.insert_json5('scouting/gossip/enabled', 'true')
        # rmw_zenoh waits for scouting at open; with multicast off there is nothing to wait for.
        conf.insert_json5('scouting/delay', '0')
        conf.insert_json5('timestamping/enabled', 'true')
    else:
        if explicit:
            conf.insert_json5('connect/endpoints', json.dumps([explicit]))
        if listen:
            conf.insert_json5('listen/endpoints', json.dumps([listen]))
    _apply_overrides(conf)
    return conf


def router_config(listen: str | None = None):
    """zenoh.Config of a router like rmw_zenohd's.

    With ZENOH_ROUTER_CONFIG_URI set: that file (its listen endpoints unless `listen` is
    given). Unset: rmw_zenoh's router defaults (router mode, multicast scouting off, gossip
    on) except that it listens on this host only (`listen`, default the router endpoint,
    tcp/127.0.0.1:7447): the default runtime is for a trusted host (docs/security.md).
    """
    import zenoh
    conf = _config_file(ROUTER_CONFIG_ENV)
    if conf is None:
        conf = zenoh.Config()
        conf.insert_json5('mode', '"router"')
        conf.insert_json5('listen/endpoints', json.dumps([listen or router_endpoint()]))
        conf.insert_json5('scouting/multicast/enabled', 'false')
        conf.insert_json5('scouting/gossip/enabled', 'true')
        conf.insert_json5('scouting/delay', '0')
        conf.insert_json5('timestamping/enabled', 'true')
    elif listen:
        conf.insert_json5('listen/endpoints', json.dumps([listen]))
    _apply_overrides(conf)
    return conf


def router_listen_endpoints(listen: str | None = None) -> list[str]:
    """Where `router_config(listen)` makes a router listen."""
    return _endpoints(router_config(listen), 'listen')


def _host_port(endpoint: str) -> tuple[str, int]:
    proto, _, addr = endpoint.partition('/')
    if proto not in ('tcp', 'udp', 'tls', 'quic') or ':' not in addr:
        raise TransportError(f"router endpoint '{endpoint}' is not of the form tcp/HOST:PORT")
    host, _, port = addr.rpartition(':')
    host = host.strip('[]')
    try:
        return host, int(port.split('#')[0].split('?')[0])
    except ValueError:
        raise TransportError(f"router endpoint '{endpoint}' has no valid port") from None


def router_reachable(endpoint: str | None = None, timeout_s: float = 0.3) -> bool:
    """True if something accepts TCP connections at the router endpoint (any program: see
    `probe_router` for whether it speaks Zenoh)."""
    host, port = _host_port(endpoint or router_endpoint())
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def probe_router(endpoint: str | None = None, timeout_s: float = 2.0) -> str | None:
    """The Zenoh id of the router at `endpoint`, or None if nothing there speaks Zenoh (or
    it refuses this process: a TLS router without this process's certificate).

    Opens a short client session with this process's session configuration (so TLS settings
    apply) connected to `endpoint` only, and asks which routers it sees.
    """
    import zenoh
    endpoint = endpoint or router_endpoint()
    conf = session_config(router=endpoint)
    conf.insert_json5('mode', '"client"')
    conf.insert_json5('connect/endpoints', json.dumps([endpoint]))
    conf.insert_json5('listen/endpoints', '[]')
    conf.insert_json5('connect/timeout_ms', '0')
    conf.insert_json5('scouting/multicast/enabled', 'false')
    conf.insert_json5('transport/unicast/open_timeout', str(max(1, int(timeout_s * 1000))))
    try:
        session = zenoh.open(conf)
    except Exception:  # zenoh raises ZError: nobody answered the Zenoh handshake
        return None
    try:
        zids = [str(z) for z in session.info.routers_zid()]
        return zids[0] if zids else None
    finally:
        with contextlib.suppress(Exception):
            session.close()


def port_holder(port: int) -> str:
    """'pid 1234 (python3 -m http.server 7447)' of the process listening on TCP `port`, read
    from /proc where this user may; '' when it cannot be told."""
    inodes = set()
    for table in ('/proc/net/tcp', '/proc/net/tcp6'):
        try:
            with open(table, encoding='ascii') as f:
                next(f, None)
                for line in f:
                    cols = line.split()
                    if len(cols) > 9 and cols[3] == '0A' and \
                            int(cols[1].rsplit(':', 1)[1], 16) == port:
                        inodes.add(f'socket:[{cols[9]}]')
        except (OSError, ValueError):
            continue
    if not inodes:
        return ''
    try:
        pids = [p for p in os.listdir('/proc') if p.isdigit()]
    except OSError:
        return ''
    for pid in pids:
        fd_dir = f'/proc/{pid}/fd'
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f'{fd_dir}/{fd}') in inodes:
                    with open(f'/proc/{pid}/cmdline', 'rb') as f:
                        cmd = ' '.join(f.read().replace(b'\0', b' ')
                                       .decode(errors='replace').split())
                    return f'pid {pid} ({cmd[:120] or "?"})'
            except OSError:
                continue
    return ''


def check_router(endpoint: str | None = None, timeout_s: float = 2.0) -> str:
    """The id of the Zenoh router at `endpoint`; TransportError naming the port (and the
    process holding it, where /proc tells) if something else answers there."""
    endpoint = endpoint or router_endpoint()
    zid = probe_router(endpoint, timeout_s)
    if zid is not None:
        return zid
    _host, port = _host_port(endpoint)
    holder = port_holder(port)
    secure = ' or refuses this process (TLS: check its certificate and ' \
        f'{SESSION_CONFIG_ENV})' if endpoint.startswith(('tls/', 'quic/')) else ''
    raise TransportError(
        f'port {port} ({endpoint}) is held by '
        f'{holder or "a program"} that does not answer as a Zenoh router{secure}: the nodes '
        'would never meet. Stop that program, or use another port for the router '
        '(QAIL_ROS_ZENOH_ROUTER=tcp/127.0.0.1:PORT, or qail-ros router --listen)')


def free_endpoint(host: str = '127.0.0.1') -> str:
    """`tcp/127.0.0.1:<free port>`: a router endpoint for tests that must not collide."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return f'tcp/{host}:{s.getsockname()[1]}'


def run_router(listen: str | None = None, stop: threading.Event | None = None,
               ready: Callable[[str], None] | None = None) -> None:
    """Run a Zenoh router until `stop` is set, SIGINT / SIGTERM (KeyboardInterrupt)."""
    import zenoh
    conf = router_config(listen)
    endpoint = ', '.join(_endpoints(conf, 'listen')) or '(no listen endpoint)'
    try:
        session = zenoh.open(conf)
    except Exception as exc:  # zenoh raises ZError
        raise TransportError(f'cannot start a Zenoh router on {endpoint}: {exc} (is another '
                             'router or program using that port?'
                             + (f' Or check {ROUTER_CONFIG_ENV}.' if os.environ.get(
                                 ROUTER_CONFIG_ENV) else '') + ')') from None
    try:
        if ready is not None:
            ready(str(session.zid()))
        event = stop or threading.Event()
        while not event.wait(0.5):
            pass
    finally:
        session.close()


class RouterHandle:
    """A router started by `ensure_router` in a child process; `stop()` ends it."""

    def __init__(self, endpoint: str, process: subprocess.Popen):
        self.endpoint = endpoint
        self.process = process

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 3.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return f'RouterHandle({self.endpoint!r}, pid={self.pid})'


def ensure_router(endpoint: str | None = None, timeout_s: float = 10.0,
                  quiet: bool = True) -> RouterHandle | None:
    """Make sure a router listens at `endpoint` (default: `router_endpoint()`).

    Returns None if a Zenoh router already answers there (`check_router`: something that
    accepts TCP but does not speak Zenoh is a TransportError naming the port and the process
    holding it), else a `RouterHandle` of a router started in a child process (with
    ZENOH_ROUTER_CONFIG_URI's file when set); the child also exits within ~0.5 s if this
    process dies without stopping it (it watches its parent), so no router is left orphaned.
    Raises TransportError if it cannot be started within `timeout_s`.
    """
    endpoint = endpoint or router_endpoint()
    if router_reachable(endpoint):
        check_router(endpoint)
        return None
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (root, env.get('PYTHONPATH')) if p)
    out = subprocess.DEVNULL if quiet else None
    # A router configuration file says where the router listens; else it listens at endpoint.
    where = [] if os.environ.get(ROUTER_CONFIG_ENV, '').strip() else ['--listen', endpoint]
    proc = subprocess.Popen(
        [sys.executable, '-m', 'qail_ros.cli', 'router', *where, '--parent', str(os.getpid())],
        env=env, stdout=out, stderr=subprocess.PIPE if quiet else None)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors='replace').strip() if proc.stderr else ''
            raise TransportError(f'the Zenoh router for {endpoint} exited at start-up'
                                 + (f': {err.splitlines()[-1]}' if err else ''))
        if router_reachable(endpoint, timeout_s=0.2):
            if proc.stderr is not None:
                # Drain stderr in the background so that a chatty router never blocks.
                threading.Thread(target=proc.stderr.read, daemon=True).start()
            return RouterHandle(endpoint, proc)
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    raise TransportError(f'the Zenoh router for {endpoint} did not start within {timeout_s} s'
                         + (f' (does {ROUTER_CONFIG_ENV} listen there?)' if where == [] else ''))


@contextlib.contextmanager
def private_router(endpoint: str | None = None):
    """Point this process (and the children it starts) at a router of its own while inside.

    Sets QAIL_ROS_ZENOH_ROUTER to `endpoint` (default: a free localhost port), starts a router
    there if none answers, and on exit stops it and restores the variable, so one benchmark or
    test never leaves another pointed at a router that is gone. Yields the endpoint.
    """
    endpoint = endpoint or free_endpoint()
    saved = os.environ.get('QAIL_ROS_ZENOH_ROUTER')
    os.environ['QAIL_ROS_ZENOH_ROUTER'] = endpoint
    router = None
    try:
        router = ensure_router(endpoint)
        yield endpoint
    finally:
        if router is not None:
            router.stop()
        if saved is None:
            os.environ.pop('QAIL_ROS_ZENOH_ROUTER', None)
        else:
            os.environ['QAIL_ROS_ZENOH_ROUTER'] = saved


# ------------------------------------------------------------------------------------------
# the transport
# ------------------------------------------------------------------------------------------
def _direct(callback: Callable):
    """A Zenoh callback handler that runs on Zenoh's own thread (no extra Python thread).

    Used for graph and matching events. Data samples keep zenoh-python's default handler,
    which runs callbacks on a Python thread of their own: measured here, that gives a lower
    latency tail for camera images than taking the GIL on Zenoh's network thread.
    """
    import zenoh
    return zenoh.handlers.Callback(callback, indirect=False)


#: Remote subscriptions still declared. zenoh-python's default callback thread is not a
#: daemon thread, so a process that never calls `runtime.shutdown()` would wait for it forever
#: at exit; `_undeclare_at_exit` ends them first.
_open_subscriptions: 'weakref.WeakSet[_RemoteSubscription]' = weakref.WeakSet()
_exit_hook_installed = False


def _undeclare_at_exit() -> None:
    for remote in list(_open_subscriptions):
        remote.close()


def _install_exit_hook() -> None:
    global _exit_hook_installed
    if _exit_hook_installed:
        return
    _exit_hook_installed = True
    # threading._register_atexit hooks run *before* the interpreter joins non-daemon threads
    # (concurrent.futures relies on it); atexit hooks run after, too late for this.
    register = getattr(threading, '_register_atexit', None)
    try:
        if register is not None:
            register(_undeclare_at_exit)
            return
    except RuntimeError:  # already shutting down
        return
    import atexit
    atexit.register(_undeclare_at_exit)


class _RemotePublisher:
    """Zenoh side of one publisher: serialises only while a remote subscriber matches.

    A transient_local publisher is a zenoh-ext advanced publisher with a cache of `depth`
    samples (as in rmw_zenoh); it serialises every message, since late joiners read the cache.
    """

    def __init__(self, transport: 'ZenohTransport', pub, keyexpr: str, token_key: str):
        import zenoh
        qos = pub.qos
        reliable = qos.reliability == 'reliable'
        congestion = (zenoh.CongestionControl.BLOCK if reliable and qos.history == 'keep_all'
                      else zenoh.CongestionControl.DROP)
        reliability = zenoh.Reliability.RELIABLE if reliable else zenoh.Reliability.BEST_EFFORT
        self.keyexpr = keyexpr
        self.gid = gid_from_keyexpr(token_key)
        self.sequence_number = 1
        self.serialized = 0
        self.shm_sent = 0
        self.matching = False
        self._listener = None
        self._lock = threading.Lock()
        self._closed = False
        self._shm = transport.shm_copy
        session = transport.session
        if qos.durability == 'transient_local':
            from zenoh import ext
            self._zpub: zenoh.Publisher | zenoh_ext.AdvancedPublisher
            self._zpub = ext.declare_advanced_publisher(
                session, keyexpr, congestion_control=congestion, reliability=reliability,
                allowed_destination=zenoh.Locality.REMOTE,
                cache=ext.CacheConfig(max_samples=max(1, qos.depth)),
                sample_miss_detection=(ext.MissDetectionConfig(heartbeat=None,
                                                               sporadic_heartbeat=0.5)
                                       if reliable else None),
                publisher_detection=True)
            self.matching = True  # the cache must hold every message
        else:
            zpub = session.declare_publisher(
                keyexpr, congestion_control=congestion, reliability=reliability,
                allowed_destination=zenoh.Locality.REMOTE)
            self._zpub = zpub
            self._listener = zpub.declare_matching_listener(_direct(self._on_matching))
            # zenoh's stub says matching_status is a bool; it is a MatchingStatus (.matching)
            self.matching = bool(zpub.matching_status.matching)  # type: ignore[attr-defined]
        self._token = session.liveliness().declare_token(token_key)

    def _on_matching(self, status) -> None:
        self.matching = bool(status.matching) and not self._closed

    def publish(self, msg: Any) -> None:
        if not self.matching:
            return
        data = cdr_payload(msg)
        with self._lock:
            if self._closed:
                return
            seq = self.sequence_number
            self.sequence_number += 1
            self.serialized += 1
            attachment = encode_attachment(seq, time.time_ns(), self.gid)
            shm_buf = self._shm(data) if len(data) >= SHM_MIN_BYTES else None
            if shm_buf is not None:
                self.shm_sent += 1
            self._zpub.put(data if shm_buf is None else shm_buf, attachment=attachment)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self.matching = False
        for thing in (self._token, self._listener, self._zpub):
            if thing is not None:
                with contextlib.suppress(Exception):
                    thing.undeclare()


class _RemoteSubscription:
    """Zenoh side of one subscription: remote samples go to the executor as CDR bytes.

    A transient_local subscription is an advanced subscriber that queries the history of
    (late-joining) advanced publishers, as in rmw_zenoh.
    """

    def __init__(self, transport: 'ZenohTransport', sub, keyexpr: str, token_key: str):
        import zenoh
        enqueue = transport.enqueue
        self.keyexpr = keyexpr
        self.gid = gid_from_keyexpr(token_key)

        def on_sample(sample, _sub=sub, _enqueue=enqueue):
            _enqueue(_sub, sample.payload.to_bytes())

        session = transport.session
        qos = sub.qos
        if qos.durability == 'transient_local':
            from zenoh import ext
            reliable = qos.reliability == 'reliable'
            self._zsub: zenoh.Subscriber[None] | zenoh_ext.AdvancedSubscriber[None]
            self._zsub = ext.declare_advanced_subscriber(
                session, keyexpr, on_sample, allowed_origin=zenoh.Locality.REMOTE,
                history=ext.HistoryConfig(detect_late_publishers=True,
                                          max_samples=max(1, qos.depth)),
                recovery=(ext.RecoveryConfig(periodic_queries=None, heartbeat=True)
                          if reliable else None),
                subscriber_detection=True)
        else:
            self._zsub = session.declare_subscriber(keyexpr, on_sample,
                                                    allowed_origin=zenoh.Locality.REMOTE)
        self._token = session.liveliness().declare_token(token_key)
        _install_exit_hook()
        _open_subscriptions.add(self)

    def close(self) -> None:
        _open_subscriptions.discard(self)
        for thing in (self._token, self._zsub):
            with contextlib.suppress(Exception):
                thing.undeclare()


class _NodeToken:
    def __init__(self, token, nid: int, key: str):
        self.token = token
        self.nid = nid
        self.key = key

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.token.undeclare()


class ZenohTransport:
    """One Zenoh session per process, shared by every node of an `EmbeddedRuntime`.

    `enqueue(subscription, cdr_bytes)` is called on Zenoh's threads for every remote sample.
    """

    def __init__(self, executor=None, enqueue: Callable[[Any, bytes], None] | None = None,
                 router: str | None = None, warn: bool = True):
        try:
            import zenoh
        except ImportError:
            raise TransportError('eclipse-zenoh is not installed: pip install eclipse-zenoh '
                                 '(see requirements.txt) for inter-process topics') from None
        self.domain = domain_id()
        self.router = router or router_endpoint()
        self.enqueue = enqueue or (lambda sub, data: None)
        self.router_found = router_reachable(self.router)
        if not self.router_found and warn:
            _ensure_log_handler()
            log.warning(
                'no Zenoh router at %s: this process works, but other processes will not see '
                "its topics. Start one with 'qail-ros router%s' (or 'ros2 run rmw_zenoh_cpp "
                "rmw_zenohd'), or point QAIL_ROS_ZENOH_ROUTER at a running router.",
                self.router, '' if self.router == DEFAULT_ROUTER else f' --listen {self.router}')
        try:
            self.session = zenoh.open(session_config(router))
        except Exception as exc:  # zenoh raises ZError
            conf_file = os.environ.get(SESSION_CONFIG_ENV, '').strip()
            raise TransportError(f'cannot open a Zenoh session (router {self.router}): {exc}; '
                                 + (f'check {SESSION_CONFIG_ENV}={conf_file} (certificates, '
                                    'router endpoint) and that the router runs' if conf_file
                                    else 'check QAIL_ROS_ZENOH_ROUTER')) from None
        self._closed = False
        self.zid = str(self.session.zid())
        #: Zenoh ids of the routers this session is linked to; `router_losses` counts the times
        #: the last one went away (the nodes warn then, and say when one is back).
        self.router_zids: set[str] = set()
        self.router_losses = 0
        self._router_seen = threading.Event()
        self._router_events = None
        try:
            self._router_events = self.session.info.declare_transport_events_listener(
                _direct(self._on_transport), history=True)
        except Exception:  # noqa: BLE001 - an older zenoh-python without transport events
            self.router_zids = {str(z) for z in self.session.info.routers_zid()}
        if self.router_found:  # a peer links to the router just after open: give it a moment
            self._router_seen.wait(2.0)
        if self.router_found and not self.router_zids and warn:
            _host, port = _host_port(self.router)
            holder = port_holder(port)
            _ensure_log_handler()
            log.warning('%s accepts connections but no Zenoh router answered there (port %d '
                        'held by %s): other processes will not see this one\'s topics. Stop '
                        'that program or point QAIL_ROS_ZENOH_ROUTER at a Zenoh router',
                        self.router, port, holder or 'another program')
        self._ids = iter(range(1 << 62))
        self._id_lock = threading.Lock()
        self._graph: dict[str, GraphEntity] = {}
        self._graph_lock = threading.Lock()
        self._graph_sub = self.session.liveliness().declare_subscriber(
            f'{ADMIN_SPACE}/{self.domain}/**', _direct(self._on_token), history=True)
        self._shm_provider: zenoh_shm.ShmProvider | None = None
        self._shm_mb = _shm_megabytes()  # a bad value fails here, at start-up
        self._shm_state = 'unused' if self._shm_mb > 0 else 'off'  # -> 'on' | 'off'
        self._shm_lock = threading.Lock()

    # -- router presence ---------------------------------------------------------------------
    @property
    def router_connected(self) -> bool:
        return bool(self.router_zids)

    def _on_transport(self, event) -> None:
        import zenoh
        transport = event.transport
        if transport.whatami != zenoh.WhatAmI.ROUTER or self._closed:
            return
        zid = str(transport.zid)
        if event.kind == zenoh.SampleKind.DELETE:
            self.router_zids.discard(zid)
            if not self.router_zids:
                self.router_losses += 1
                _ensure_log_handler()
                log.warning('lost the Zenoh router %s (%s): processes not already linked to '
                            'this one (a restarted node, a new one) cannot reach its topics '
                            'until it is back; peers already linked and local topics go on',
                            zid[:8], self.router)
        else:
            was_lost = not self.router_zids and self.router_losses > 0
            self.router_zids.add(zid)
            self._router_seen.set()
            if was_lost:
                _ensure_log_handler()
                log.warning('the Zenoh router is back (%s at %s): topics to other processes '
                            'resume', zid[:8], self.router)

    # -- shared memory -------------------------------------------------------------------------
    def shm_copy(self, data: bytes | bytearray):
        """`data` copied into a Zenoh shared-memory buffer, or None (SHM off / pool full).

        Zenoh hands SHM buffers to peers on this machine without copying them through a
        socket, and copies them transparently for peers elsewhere or without SHM. The pool
        (`QAIL_ROS_ZENOH_SHM_MB`, default 64; 0 turns this off) is created at first use.
        """
        if self._shm_state == 'off':
            return None
        from zenoh import shm
        if self._shm_state == 'unused':
            with self._shm_lock:
                if self._shm_state == 'unused':
                    self._shm_state = 'off'
                    try:
                        self._shm_provider = shm.ShmProvider.default_backend(
                            self._shm_mb * 1024 * 1024)
                        self._shm_state = 'on'
                    except Exception as exc:  # zenoh raises ZError
                        log.warning('no shared memory for Zenoh (%s); large messages go '
                                    'through sockets', exc)
            if self._shm_state != 'on':
                return None
        if self._shm_provider is None:  # 'on' means a provider
            return None
        try:
            buf = self._shm_provider.alloc(len(data), shm.GarbageCollect())
        except Exception:  # pool full (slow receivers hold buffers): plain put instead
            return None
        buf[:] = data
        return buf

    # -- ids -----------------------------------------------------------------------------------
    def _next_id(self) -> int:
        with self._id_lock:
            return next(self._ids)

    # -- graph ---------------------------------------------------------------------------------
    def _on_token(self, sample) -> None:
        import zenoh
        key = str(sample.key_expr)
        with self._graph_lock:
            if sample.kind == zenoh.SampleKind.DELETE:
                self._graph.pop(key, None)
            else:
                entity = parse_liveliness_keyexpr(key)
                if entity is not None:
                    self._graph[key] = entity

    def graph(self) -> list[GraphEntity]:
        with self._graph_lock:
            return list(self._graph.values())

    def count_remote(self, topic: str, kind: str) -> int:
        """Publishers ('MP') or subscriptions ('MS') of `topic` in other processes."""
        return sum(1 for e in self.graph()
                   if e.kind == kind and e.topic == topic and e.zid != self.zid)

    def graph_topics(self) -> list[tuple[str, str]]:
        return sorted({(e.topic, e.msgtype) for e in self.graph() if e.topic is not None})

    # -- entities ------------------------------------------------------------------------------
    def add_node(self, node) -> None:
        nid = self._next_id()
        key = liveliness_keyexpr(self.domain, self.zid, nid, nid, ENTITY_NODE, node.namespace,
                                 node.name)
        node.remote = _NodeToken(self.session.liveliness().declare_token(key), nid, key)

    def remove_node(self, node) -> None:
        token, node.remote = node.remote, None
        if token is not None:
            token.close()

    def _entity_key(self, entity, kind: str) -> tuple[str, str]:
        node = entity.node
        nid = node.remote.nid if node.remote is not None else self._next_id()
        key = topic_keyexpr(self.domain, entity.topic, entity.msgtype)
        token = liveliness_keyexpr(self.domain, self.zid, nid, self._next_id(), kind,
                                   node.namespace, node.name, topic=entity.topic,
                                   msgtype=entity.msgtype, qos=entity.qos)
        return key, token

    def add_publisher(self, pub) -> None:
        key, token = self._entity_key(pub, ENTITY_PUB)
        pub.remote = _RemotePublisher(self, pub, key, token)

    def add_subscription(self, sub) -> None:
        key, token = self._entity_key(sub, ENTITY_SUB)
        sub.remote = _RemoteSubscription(self, sub, key, token)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._shm_state = 'off'
        if self._router_events is not None:
            with contextlib.suppress(Exception):
                self._router_events.undeclare()
        with contextlib.suppress(Exception):
            self._graph_sub.undeclare()
        with contextlib.suppress(Exception):
            self.session.close()
