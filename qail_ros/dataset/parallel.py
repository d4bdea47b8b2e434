"""`dataset build --workers N`: the episodes' bags read in a process pool, in order.

The builder reads one episode at a time (its bags -> sample arrays); that is where the time of
a build over many bags goes (CDR decoding, image conversion, resizing). `read_episodes` runs
that per-episode read in N worker processes (each reopens the episode's bags by path) and
hands the results back in episode order, at most 2 N in flight, with a progress bar; shards,
statistics and the manifest are still written by the one builder process, so the data set is
the same whatever N. N = 1 reads in the builder's process, exactly as before.
"""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from typing import Any

__all__ = ['read_episodes', 'default_workers']


def default_workers() -> int:
    """Processes for `--workers 0` (auto): the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _read_in_worker(paths: list[str], facts: list[Any], episode_facts: Any, key: tuple,
                    tmap: Any) -> tuple[dict[str, Any] | None, dict[str, int]]:
    """One episode in a worker process: reopen its bags, read it, return (arrays, counters)."""
    from pathlib import Path

    from qail_ros.bag import BagReader
    from qail_ros.dataset.episode import Episode, EpisodeBag, read_episode
    counters: dict[str, int] = {}
    readers = []
    try:
        bags = []
        for path, f in zip(paths, facts):
            reader = BagReader(Path(path))
            readers.append(reader)
            bags.append(EpisodeBag(Path(path), reader, f, tmap, {}))
        ep = Episode(key, bags, episode_facts)
        counting = _Counters()
        data = read_episode(ep, tmap, counting)
        counters = dict(counting)
    finally:
        for reader in readers:
            reader.close()
    return data, counters


class _Counters(dict):
    """A counter dict whose missing keys start at 0 (merged into the builder's after)."""

    def __missing__(self, key):
        return 0


def read_episodes(episodes: list, tmap: Any, counters: dict[str, int], workers: int = 1,
                  progress: bool = False) -> Iterator[dict[str, Any] | None]:
    """The arrays of each episode (dataset.episode.Episode; None when it has no paired sample), in
    order, read by `workers` processes; their pairing counters are added to `counters`."""
    from qail_ros.dataset.episode import read_episode
    bar = None
    if progress or workers > 1:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(episodes), desc='bags', unit='episode', leave=False)
    try:
        if workers <= 1:
            for ep in episodes:
                yield read_episode(ep, tmap, counters)
                if bar is not None:
                    bar.update(1)
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        ctx = multiprocessing.get_context('spawn')     # no fork of a process holding readers
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            pending: deque = deque()
            todo = iter(episodes)
            for ep in todo:
                pending.append(_submit(pool, ep, tmap))
                if len(pending) >= 2 * workers:
                    break
            while pending:
                data, counts = pending.popleft().result()
                for k, v in counts.items():
                    counters[k] = counters.get(k, 0) + v
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(_submit(pool, nxt, tmap))
                if bar is not None:
                    bar.update(1)
                yield data
    finally:
        if bar is not None:
            bar.close()


def _submit(pool, ep, tmap):
    return pool.submit(_read_in_worker, [str(b.path) for b in ep.bags],
                       [b.facts for b in ep.bags], ep.facts, ep.key, tmap)
