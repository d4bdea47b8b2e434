"""fp_recorder: records full-precision policy rollouts to rosbag2 bags, one per episode (D_FP).

Subscribes (every list entry is 'topic' or 'topic:pkg/msg/Type'; the type defaults per role)
  image_topics       sensor_msgs/Image camera(s) the policy sees (['image_raw'])
  instruction_topic  std_msgs/String task / instruction ('instruction'; '' = none); the
                     latest one becomes the episode's task
  command_topics     speed / high-level command (default type std_msgs/Float32MultiArray)
  state_topics       robot state (default type sensor_msgs/JointState)
  action_topics      the policy's action(s) (default std_msgs/Float32MultiArray)
  raw_outputs_topic  the policy's ~/raw_outputs (policy_io contract, Float64MultiArray)
  timing_topic       the policy's ~/policy_timing (policy_io contract)
  ~/control          std_msgs/String commands: start, stop, pause, resume,
                     episode_end success|failure (plain episode_end: outcome unknown)

Publishes
  ~/episode          std_msgs/String, JSON EpisodeInfo at the start and end of each episode

Pairing: every action-side message (actions, raw outputs, timing) is matched to the
observation of `pair_topic` (default: the first image topic) with the *same* stamp
(header.stamp, or the policy_io stamp prefix), in bounded buffers; matched / unmatched /
unstamped counts per topic are logged and stored with the episode. Nothing is ever paired
with "the latest image".

Writing: callbacks only queue (qail_ros.recording.BagWriterThread); one thread writes. A full
queue (disk slower than the stream) drops and counts, with an error log at most every
`report_period_s`. Episode facts go into each bag's custom metadata and onto the
/qail_ros/episode topic in the bag. Ctrl-C / SIGTERM close the bag (the episode is marked
complete=false, end_reason=shutdown).

Fatal errors: when the disk's free space minus what waits in the queue falls below
`min_free_mb` (which must be > 0), or a write fails (ENOSPC, EACCES), the recorder closes the
episode's bag (readable, complete=false) and exits with an error (exit code 2), so that a launch
that marks it required stops instead of running on with nothing recorded. The message counts it
logs at exit are what the bags hold.

Parameters: see config/fp_recorder.yaml and docs/recorder.md.
"""
from __future__ import annotations

import functools
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from qail_ros.errors import BagError, ParameterError
from qail_ros.recording import (EPISODE_TOPIC, BagWriterThread, EpisodeInfo, RateLimiter,
                                StampPairing, engine_hash, parse_rate_limits, stamp_of)
from qail_ros.runtime import Node, QoS, run_node

__all__ = ['FpRecorder', 'main', 'DEFAULT_TYPES', 'RECORD_QOS']

DEFAULT_TYPES = {
    'image': 'sensor_msgs/msg/Image',
    'instruction': 'std_msgs/msg/String',
    'command': 'std_msgs/msg/Float32MultiArray',
    'state': 'sensor_msgs/msg/JointState',
    'action': 'std_msgs/msg/Float32MultiArray',
    'raw_outputs': 'std_msgs/msg/Float64MultiArray',
    'timing': 'std_msgs/msg/Float64MultiArray',
}
#: Reliable (matches reliable camera drivers and every policy publisher), room for bursts.
RECORD_QOS = QoS(depth=30, reliability='reliable')
ACTION_ROLES = ('action', 'raw_outputs', 'timing')
COMMANDS = ('start', 'stop', 'pause', 'resume', 'episode_end')


def _split_spec(spec: str, role: str) -> tuple[str, str]:
    topic, sep, mtype = spec.partition(':')
    if not topic:
        raise ParameterError(f"fp_recorder: empty topic in '{spec}' ({role} topics)")
    return topic, (mtype if sep and mtype else DEFAULT_TYPES[role])


class FpRecorder(Node):
    """Records policy inputs and outputs per episode; see the module docstring."""

    def __init__(self, **kwargs):
        super().__init__('fp_recorder', **kwargs)
        p = self.declare_parameter
        self.output_dir = p('output_dir', 'recordings', 'directory the bags go to').value
        self.bag_prefix = p('bag_prefix', 'fp', 'bag name prefix').value
        self.storage = p('storage', 'mcap', "'mcap' or 'sqlite3'").value
        self.compression = p('compression', '', "'' or 'zstd' (mcap chunks)").value
        self.image_topics = list(p('image_topics', ['image_raw'], 'camera topics').value)
        self.instruction_topic = p('instruction_topic', 'instruction', "'' = none").value
        self.command_topics = list(p('command_topics', [], 'speed / command topics').value)
        self.state_topics = list(p('state_topics', [], 'robot state topics').value)
        self.action_topics = list(p('action_topics', ['action'], 'action topics').value)
        self.raw_outputs_topic = p('raw_outputs_topic', 'vla_policy/raw_outputs',
                                   "policy raw outputs ('' = none)").value
        self.timing_topic = p('timing_topic', 'vla_policy/policy_timing',
                              "policy timing ('' = none)").value
        self.pair_topic = p('pair_topic', '', "observation topic actions pair with "
                            "('' = the first image topic)").value
        self.pair_buffer = p('pair_buffer', 300, 'stamps kept waiting for a partner').value
        self.rate_limits = parse_rate_limits(list(p(
            'rate_limits', [], "['topic:hz', ...] recorded at most hz (stamp time)").value))
        self.rate_limit_paired = p('rate_limit_paired', False, 'rate-limit the pairing '
                                   'topic among frames the policy acted on (held until '
                                   'their action arrives)').value
        self.pair_hold_frames = p('pair_hold_frames', 60, 'frames held waiting for their '
                                  'action (rate_limit_paired)').value
        self.split_size_mb = p('split_size_mb', 0.0, 'new bag after this many MB (0 = '
                               'no size split)').value
        self.split_duration_s = p('split_duration_s', 0.0, 'new bag after this many s').value
        self.max_episodes = p('max_episodes', 0, 'stop after this many episodes (0 = no '
                              'limit)').value
        self.max_episode_duration_s = p('max_episode_duration_s', 0.0, 'end an episode '
                                        '(complete, outcome unknown) after this long').value
        self.autostart = p('autostart', True, 'start the first episode at activation').value
        self.continuous = p('continuous', True, 'start the next episode when one ends').value
        self.policy_id = p('policy_id', '', 'id of the policy driving').value
        self.precision = p('precision', '', "its precision ('fp32', 'bf16', 'w4a4')").value
        self.engine_file = p('engine_file', '', 'model/engine file (hashed)').value
        self.engine_hash = p('engine_hash', '', "hash if known ('' = sha256 of "
                             'engine_file)').value
        self.task = p('task', '', 'task text (the instruction topic replaces it)').value
        self.queue_max_mb = p('queue_max_mb', 256.0, 'most MB waiting for the disk').value
        self.queue_max_messages = p('queue_max_messages', 2000, 'most messages waiting').value
        self.flush_interval_s = p('flush_interval_s', 1.0, 'bag chunk age limit').value
        self.min_free_mb = p('min_free_mb', 200.0, 'end the episode and stop when the disk '
                             'has less free space').value
        self.report_period_s = p('report_period_s', 10.0, 'status log period (0 = '
                                 'never)').value
        self._validate()

        # topic -> role, msgtype; subscriptions use the names as given, the bag the resolved
        self.topics: dict[str, tuple[str, str]] = {}
        specs = [(s, 'image') for s in self.image_topics]
        specs += [(self.instruction_topic, 'instruction')] if self.instruction_topic else []
        specs += [(s, 'command') for s in self.command_topics]
        specs += [(s, 'state') for s in self.state_topics]
        specs += [(s, 'action') for s in self.action_topics]
        specs += [(self.raw_outputs_topic, 'raw_outputs')] if self.raw_outputs_topic else []
        specs += [(self.timing_topic, 'timing')] if self.timing_topic else []
        self._subs = {}
        self._limiters: dict[str, RateLimiter] = {}
        wanted_limits = dict(self.rate_limits)
        for spec, role in specs:
            if not spec:
                continue
            name, mtype = _split_spec(spec, role)
            route = [role, name]        # (role, resolved topic) handed to the callback
            sub = self.create_subscription(mtype, name, functools.partial(
                self.message_callback, route), RECORD_QOS)
            topic = route[1] = sub.topic
            if topic in self.topics:
                raise ParameterError(f"fp_recorder: topic '{topic}' is listed twice")
            self.topics[topic] = (role, mtype)
            self._subs[topic] = sub
            for key in (name, topic):
                if key in wanted_limits:
                    self._limiters[topic] = RateLimiter(wanted_limits.pop(key))
        if wanted_limits:
            raise ParameterError(f'fp_recorder: rate_limits name topics that are not recorded: '
                                 f'{sorted(wanted_limits)}; recorded: {sorted(self.topics)}')
        images = [t for t, (r, _m) in self.topics.items() if r == 'image']
        if self.pair_topic:
            matches = [t for t in self.topics if t == self.pair_topic
                       or t.rsplit('/', 1)[-1] == self.pair_topic.rsplit('/', 1)[-1]
                       and self.pair_topic.lstrip('/') in t]
            if not matches:
                raise ParameterError(f"fp_recorder: pair_topic '{self.pair_topic}' is not one "
                                     f'of the recorded topics {sorted(self.topics)}')
            self._pair_topic = matches[0]
        else:
            self._pair_topic = images[0] if images else ''

        self.control_sub = self.create_subscription('std_msgs/msg/String', '~/control',
                                                    self.control_callback, 10)
        self.episode_pub = self.create_publisher('std_msgs/msg/String', '~/episode', 10)

        self.session = time.strftime('%Y%m%d_%H%M%S')
        self.writer: BagWriterThread | None = None
        self.recording = False
        self.paused = False
        self.episode: EpisodeInfo | None = None
        self.pairing = StampPairing(self.pair_buffer)
        self.episodes_done = 0
        self.next_index = 0
        self.received: dict[str, int] = {t: 0 for t in self.topics}
        self.recorded: dict[str, int] = {t: 0 for t in self.topics}
        self.rate_skipped: dict[str, int] = {t: 0 for t in self.topics}
        self.idle_skipped = 0
        self.last_error = ''
        self._writer_error: str | None = None
        self._engine_hash = self.engine_hash
        self._part_bytes = 0
        self._part_start = 0.0
        self._episode_start = 0.0
        self._last_drop_log = 0.0
        self._drops_logged = 0
        self._last_report = time.monotonic()
        self._timer = None
        # rate_limit_paired: pairing-topic frames waiting for their action, stamp -> (msg, t)
        self._held: dict[int, tuple[Any, int]] = {}

    def _validate(self) -> None:
        problems = []
        if self.storage not in ('mcap', 'sqlite3'):
            problems.append(f"storage must be 'mcap' or 'sqlite3', not '{self.storage}'")
        if self.compression not in ('', 'zstd'):
            problems.append(f"compression must be '' or 'zstd', not '{self.compression}'")
        for name in ('split_size_mb', 'split_duration_s', 'max_episode_duration_s',
                     'queue_max_mb', 'report_period_s', 'flush_interval_s'):
            if getattr(self, name) < 0:
                problems.append(f'{name} must be >= 0, not {getattr(self, name)}')
        if not self.min_free_mb > 0:
            problems.append(f'min_free_mb must be > 0, not {self.min_free_mb}: with no margin '
                            'the disk fills up and the last chunk of the bag is lost (default '
                            '200; it must cover what a few seconds of recording write)')
        if self.max_episodes < 0:
            problems.append(f'max_episodes must be >= 0, not {self.max_episodes}')
        if self.pair_buffer < 1 or self.queue_max_messages < 1 or self.pair_hold_frames < 1:
            problems.append('pair_buffer, pair_hold_frames and queue_max_messages must be '
                            '>= 1')
        if problems:
            raise ParameterError("node 'fp_recorder': " + '; '.join(problems))

    # -- lifecycle --------------------------------------------------------------------------
    def on_configure(self) -> None:
        out = Path(self.output_dir).expanduser()
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / f'.fp_recorder_write_test_{self.session}'
            probe.write_bytes(b'ok')
            probe.unlink()
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise BagError(f"fp_recorder: output_dir '{out}' is not writable ({why}); create "
                           'it with write permission for this user or set output_dir to a '
                           'writable directory') from None
        self.output_path = out
        free_mb = self.free_mb()
        if free_mb < self.min_free_mb:
            raise BagError(f"fp_recorder: only {free_mb:.0f} MB free on '{out}' (min_free_mb "
                           f'= {self.min_free_mb:g}); free space or choose another output_dir')
        if self.engine_file and not self._engine_hash:
            try:
                self._engine_hash = engine_hash(self.engine_file)
            except OSError as exc:
                raise ParameterError(f"fp_recorder: engine_file '{self.engine_file}' cannot be "
                                     f'read ({exc.strerror}); fix the path or set '
                                     'engine_hash') from None
        self.writer = BagWriterThread(
            storage=self.storage, max_queue_bytes=int(self.queue_max_mb * 1e6),
            max_queue_messages=int(self.queue_max_messages),
            flush_interval_s=float(self.flush_interval_s),
            compression=self.compression or None, on_error=self._on_writer_error).start()

    def on_activate(self) -> None:
        self._timer = self.create_timer(0.2, self.check_timer_callback)
        self.get_logger().info(
            f'recording {len(self.topics)} topics to {self.output_path} ({self.storage}); '
            f'actions pair with {self._pair_topic or "(no observation topic)"} by stamp; '
            f'rate limits {self.rate_limits or "none"}')
        if self.autostart:
            self.start_episode()

    def on_deactivate(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.recording:
            self.end_episode('unknown', 'shutdown', complete=False)

    def on_cleanup(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.stop()
            st = writer.stats
            self.get_logger().info(
                f'{self.episodes_done} episodes, {st.written} messages written '
                f'({st.written_bytes / 1e6:.1f} MB) to {len(writer.bag_paths)} bags; '
                f'{st.dropped} dropped (disk too slow), {st.failed} lost to errors'
                + (f'; error: {st.error}' if st.error else ''))

    # -- callbacks --------------------------------------------------------------------------
    def message_callback(self, route: list, msg: Any) -> None:
        """Any recorded topic: pair, rate-limit, queue. Never touches the disk."""
        role, topic = route
        self.received[topic] += 1
        if role == 'instruction':
            self.task = msg.data
            if self.episode is not None:
                self.episode.task = msg.data
        if not self.recording or self.paused:
            self.idle_skipped += 1
            return
        now = self.now_ns()
        stamp = stamp_of(msg)
        limiter = self._limiters.get(topic)
        paired_limit = (self.rate_limit_paired and topic == self._pair_topic
                        and limiter is not None and stamp is not None)
        if paired_limit and not self.pairing.has_pending(stamp):
            self.pairing.observation(stamp, recorded=False)
            self._hold(topic, stamp, msg, now)            # decided when its action comes
            return
        keep = limiter.keep(stamp or now) if limiter is not None else True
        if topic == self._pair_topic:
            self.pairing.observation(stamp, recorded=keep)
        elif role in ACTION_ROLES:
            held = self._held.pop(stamp, None) if stamp is not None else None
            if held is not None:
                self._decide_held(stamp, held)
            self.pairing.action(topic, stamp)
        if not keep:
            self.rate_skipped[topic] += 1
            return
        self._write(topic, msg, now)

    def _write(self, topic: str, msg: Any, stamp_ns: int) -> None:
        if self.writer.put(topic, msg, stamp_ns):
            self.recorded[topic] += 1
            self._part_bytes += getattr(getattr(msg, 'data', None), 'nbytes', 0) or 128
        else:
            self._log_drop(topic)

    def _hold(self, topic: str, stamp: int, msg: Any, now: int) -> None:
        self._held[stamp] = (msg, now)
        while len(self._held) > self.pair_hold_frames:     # oldest never got an action
            self._held.pop(next(iter(self._held)))
            self.rate_skipped[topic] += 1

    def _decide_held(self, stamp: int, held: tuple[Any, int]) -> None:
        """A held pairing-topic frame got its action: the rate limit decides now."""
        topic = self._pair_topic
        if self._limiters[topic].keep(stamp):
            self.pairing.mark_recorded(stamp)
            self._write(topic, held[0], held[1])
        else:
            self.rate_skipped[topic] += 1

    def control_callback(self, msg) -> None:
        """start | stop | pause | resume | episode_end [success|failure]."""
        words = msg.data.strip().lower().split()
        if not words or words[0] not in COMMANDS:
            self.get_logger().warning(f'unknown control command {msg.data!r}; use one of '
                                      f'{", ".join(COMMANDS)} (episode_end success|failure)')
            return
        cmd = words[0]
        if cmd == 'start':
            if self.recording:
                self.get_logger().info('start: already recording')
            else:
                self.start_episode()
        elif cmd == 'stop':
            if self.recording:
                self.end_episode('unknown', 'stop command', complete=True, next_episode=False)
        elif cmd == 'pause':
            self.paused = True
            self.get_logger().info('paused: messages are not recorded until resume')
        elif cmd == 'resume':
            self.paused = False
            self.get_logger().info('resumed')
        elif cmd == 'episode_end':
            outcome = words[1] if len(words) > 1 else 'unknown'
            success = {'success': 'true', 'true': 'true', 'failure': 'false', 'fail': 'false',
                       'false': 'false'}.get(outcome, 'unknown')
            if self.recording:
                self.end_episode(success, f'episode_end {outcome}', complete=True)
            else:
                self.get_logger().warning('episode_end: no episode is being recorded')

    def free_mb(self) -> float:
        """Free space (MB) on the output directory's file system."""
        return shutil.disk_usage(self.output_path).free / 1e6

    def check_timer_callback(self) -> None:
        """Writer errors, max duration, size/duration splits, free space, status log.

        A write error or too little free space ends the episode and raises BagError: the
        node stops (exit code 2) rather than run on recording nothing.
        """
        now = time.monotonic()
        if self._writer_error is not None:
            error, self._writer_error = self._writer_error, None
            self.last_error = error
            if self.recording:
                self.end_episode('unknown', 'write error', complete=False, next_episode=False)
            raise BagError(f'fp_recorder: {error} Recording stopped: fix the cause and start '
                           'the recorder again.')
        if self.recording:
            # What waits in the queue will land on the same disk: count it as used already.
            free_mb = self.free_mb() - self.writer.queued_bytes / 1e6
            if free_mb < self.min_free_mb:
                self.last_error = (f'only {free_mb:.0f} MB free on {self.output_path} '
                                   f'(min_free_mb {self.min_free_mb:g})')
                self.end_episode('unknown', 'disk almost full', complete=False,
                                 next_episode=False)
                raise BagError(f'fp_recorder: {self.last_error}: the episode is closed (its '
                               'bag is readable) and recording stopped before the disk filled '
                               'up; free space or point output_dir at a bigger disk')
        if self.recording:
            if (self.max_episode_duration_s
                    and now - self._episode_start >= self.max_episode_duration_s):
                self.end_episode('unknown', 'max_episode_duration_s', complete=True)
            elif ((self.split_size_mb and self._part_bytes >= self.split_size_mb * 1e6)
                  or (self.split_duration_s and now - self._part_start >= self.split_duration_s)):
                self._next_part()
        if self.report_period_s and now - self._last_report >= self.report_period_s:
            self._last_report = now
            self.get_logger().info(self.status_line())

    # -- episodes ---------------------------------------------------------------------------
    def _bag_path(self, index: int, part: int) -> Path:
        name = f'{self.bag_prefix}_{self.session}_ep{index:04d}'
        return self.output_path / (name if part == 0 else f'{name}_part{part:02d}')

    def _bag_topics(self) -> dict[str, tuple[str, QoS]]:
        topics = {t: (m, RECORD_QOS) for t, (_r, m) in self.topics.items()}
        topics[EPISODE_TOPIC] = ('std_msgs/msg/String', QoS(depth=10))
        return topics

    def start_episode(self) -> None:
        if self.writer is None:
            raise RuntimeError('fp_recorder is not configured')
        if self.max_episodes and self.episodes_done >= self.max_episodes:
            self.get_logger().info(f'max_episodes={self.max_episodes} reached; not starting')
            return
        index = self.next_index
        self.next_index += 1
        self.episode = EpisodeInfo(index=index, session=self.session, policy_id=self.policy_id,
                                   precision=self.precision, engine_hash=self._engine_hash,
                                   task=self.task, start_ns=self.now_ns(),
                                   roles={t: r for t, (r, _m) in self.topics.items()})
        self.pairing = StampPairing(self.pair_buffer)
        for limiter in self._limiters.values():
            limiter.reset()
        self._open_part()
        self.recording = True
        self.paused = False
        self._episode_start = time.monotonic()
        self.episode_pub.publish(self.episode.to_msg())
        self.get_logger().info(f'episode {index} started: {self._bag_path(index, 0)}')

    def _open_part(self) -> None:
        ep = self.episode
        self.writer.open_bag(self._bag_path(ep.index, ep.part), ep.to_metadata(),
                             self._bag_topics())
        self.writer.put(EPISODE_TOPIC, ep.to_msg(), self.now_ns(), force=True)
        self._part_bytes = 0
        self._part_start = time.monotonic()
        self._part_counts = dict(self.recorded)

    def _finish_facts(self, ep: EpisodeInfo) -> None:
        ep.end_ns = self.now_ns()
        ep.counts = {t: self.recorded[t] - self._part_counts.get(t, 0) for t in self.topics}
        ep.drops = dict(self.writer.stats.dropped_by_topic)
        ep.pairing = self.pairing.summary()

    def _next_part(self) -> None:
        ep = self.episode
        self._finish_facts(ep)
        ep.end_reason = 'split'
        self.writer.put(EPISODE_TOPIC, ep.to_msg(), self.now_ns(), force=True)
        self.writer.set_metadata(ep.to_metadata())
        self.writer.close_bag()
        ep.part += 1
        ep.end_reason = ''
        self._open_part()
        self.get_logger().info(f'episode {ep.index}: new bag part {ep.part}')

    def end_episode(self, success: str, reason: str, complete: bool = True,
                    next_episode: bool | None = None) -> EpisodeInfo | None:
        """Close the current episode's bag with its facts; maybe start the next one."""
        ep = self.episode
        if ep is None or not self.recording:
            return None
        if self._held:
            self.rate_skipped[self._pair_topic] += len(self._held)
            self._held.clear()
        self.pairing.finish()
        self._finish_facts(ep)
        ep.success, ep.end_reason, ep.complete = success, reason, complete
        self.writer.put(EPISODE_TOPIC, ep.to_msg(), self.now_ns(), force=True)
        self.writer.set_metadata(ep.to_metadata())
        self.writer.close_bag()
        self.recording = False
        self.episodes_done += 1
        self.episode_pub.publish(ep.to_msg())
        pairs = ep.pairing
        unmatched = {t: c['unmatched'] for t, c in pairs['topics'].items() if c['unmatched']}
        unstamped = {t: c['unstamped'] for t, c in pairs['topics'].items() if c['unstamped']}
        self.get_logger().info(
            f'episode {ep.index} ended ({reason}; success={success}, complete={complete}, '
            f'{ep.duration_s:.1f} s): {sum(ep.counts.values())} messages; observations '
            f'{pairs["observations"]} ({pairs["observations_matched"]} with an action, '
            f'{pairs["observations_unmatched"]} without); unmatched actions {unmatched or 0}'
            + (f'; UNSTAMPED (cannot pair) {unstamped}' if unstamped else ''))
        self.episode = None
        if next_episode is None:
            next_episode = self.continuous and reason != 'shutdown'
        if next_episode:
            if self.max_episodes and self.episodes_done >= self.max_episodes:
                self.get_logger().info(f'max_episodes={self.max_episodes} recorded; idle')
            else:
                self.start_episode()
        return ep

    # -- reporting --------------------------------------------------------------------------
    def _on_writer_error(self, text: str) -> None:
        self._writer_error = text      # handled on the executor thread by the timer

    def _log_drop(self, topic: str) -> None:
        now = time.monotonic()
        if now - self._last_drop_log >= max(self.report_period_s, 1.0) or not self._drops_logged:
            st = self.writer.stats
            self.get_logger().error(
                f'DROPPING MESSAGES: the disk does not keep up ({st.dropped} dropped so far, '
                f'{dict(st.dropped_by_topic)}; queue {self.writer.queued_bytes / 1e6:.0f} MB). '
                'Use a faster disk, rate_limits for cameras, or compression')
            self._last_drop_log = now
            self._drops_logged += 1

    def stats(self) -> dict[str, Any]:
        """Counters of this run (JSON-able)."""
        st = self.writer.stats if self.writer is not None else None
        return {
            'received': dict(self.received), 'recorded': dict(self.recorded),
            'rate_skipped': dict(self.rate_skipped), 'idle_skipped': self.idle_skipped,
            'queue_dropped': dict(st.dropped_by_topic) if st else {},
            'subscription_dropped': {t: int(getattr(s, 'dropped', 0) or 0)
                                     for t, s in self._subs.items()},
            'written': st.written if st else 0, 'failed': st.failed if st else 0,
            'episodes': self.episodes_done, 'pairing': self.pairing.summary(),
            'error': self.last_error}

    def status_line(self) -> str:
        st = self.writer.stats
        rec = sum(self.recorded.values())
        state = 'paused' if self.paused else 'recording' if self.recording else 'idle'
        return (f'{state}: episode {self.episode.index if self.episode else "-"}, '
                f'{rec} messages queued, {st.written} written, {st.dropped} dropped, '
                f'queue {self.writer.queued_bytes / 1e6:.1f} MB')


def main(args=None) -> int:
    return run_node(FpRecorder, args)


if __name__ == '__main__':
    sys.exit(main())
