"""Data-parallel training under torchrun on CPU (gloo, 2 processes on loopback).

Tolerances (stated, and what was seen): a 2-rank run at the same global batch gives the loss
curve of 1 rank to a relative 1e-4 per step (seen: < 1e-6; the only difference is the order of
the float sums of the two half batches) and weights to 1e-5 (seen: 1.5e-7). A run killed with
SIGKILL (or crashed and restarted by torchrun) and resumed from its last checkpoint ends with
the weights of the uninterrupted run to 1e-6 (the same float operations in the same order).
"""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

if not Path('/proc/self/stat').exists():
    pytest.skip('the kill tests walk /proc (Linux)', allow_module_level=True)

HERE = Path(__file__).parent
WORKER = str(HERE / 'ddp_worker.py')
LOSS_RTOL = 1e-4
WEIGHT_ATOL = 1e-5
RESUME_ATOL = 1e-6


def _port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    env.pop('WORLD_SIZE', None)
    return env


def _torchrun(nproc: int, *extra: str) -> list[str]:
    return [sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node', str(nproc),
            '--master-addr', '127.0.0.1', '--master-port', str(_port()), *extra, WORKER]


def _run(cmd: list[str], timeout: float = 240) -> None:
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def _tree(pid: int) -> list[int]:
    """`pid` and all its descendants (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            fields = stat.read_text().rsplit(')', 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
    except OSError:
        return False
    return state not in ('Z', 'X')


def _kill_tree(pid: int) -> None:
    for p in _tree(pid):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _result(out: Path) -> dict:
    return torch.load(out / 'result.pt', weights_only=False)


def _losses(res: dict) -> list[float]:
    return [r['loss'] for r in res['history']]


def _max_weight_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


MLP = ['--model', 'mlp', '--steps', '20', '--batch', '64', '--checkpoint-every', '5']


@pytest.fixture(scope='module')
def mlp_runs(tmp_path_factory):
    """The physics MLP student: 1 process (no torchrun) and 2 processes, same global batch."""
    root = tmp_path_factory.mktemp('mlp')
    _run([sys.executable, WORKER, *MLP, '--out', str(root / 'one'), '--ckdir',
          str(root / 'ck1')])
    _run(_torchrun(2) + [*MLP, '--out', str(root / 'two'), '--ckdir', str(root / 'ck2')])
    return root, _result(root / 'one'), _result(root / 'two')


def test_two_ranks_give_the_loss_curve_of_one(mlp_runs):
    _, one, two = mlp_runs
    assert one['world'] == 1 and two['world'] == 2
    a, b = _losses(one), _losses(two)
    assert len(a) == len(b) == 20
    for x, y in zip(a, b):
        assert abs(x - y) <= LOSS_RTOL * abs(x)
    assert a[-1] < a[0]                      # it trained
    assert _max_weight_diff(one['weights'], two['weights']) < WEIGHT_ATOL


def test_checkpoints_are_written_by_rank_zero_with_every_ranks_state(mlp_runs):
    root, _, _ = mlp_runs
    ck = root / 'ck2'
    assert (ck / 'latest').read_text().strip() == 'step-00000020'
    kept = sorted(p.name for p in ck.iterdir() if p.is_dir())
    assert kept == ['step-00000015', 'step-00000020']      # the last two
    files = {p.name for p in (ck / 'step-00000020').iterdir()}
    assert files == {'state.pt', 'rank0.pt', 'rank1.pt'}
    state = torch.load(ck / 'step-00000020' / 'state.pt', weights_only=False)
    assert state['step'] == 20 and state['world'] == 2 and 'optimizer' in state


def test_sigkilled_two_rank_run_resumes_to_the_same_weights(mlp_runs, tmp_path):
    _, _, two = mlp_runs
    ck, out = tmp_path / 'ck', tmp_path / 'out'
    cmd = _torchrun(2) + [*MLP, '--out', str(out), '--ckdir', str(ck), '--sleep', '0.25']
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            latest = ck / 'latest'
            if latest.is_file() and latest.read_text().strip() >= 'step-00000010':
                break
            assert proc.poll() is None, 'the run ended before it could be killed'
            time.sleep(0.05)
        else:
            pytest.fail('no checkpoint within 180 s')
        workers = _tree(proc.pid)
        assert len(workers) >= 3                 # torchrun and its two workers
        _kill_tree(proc.pid)                     # all of them at once, no warning
        proc.wait(30)
        time.sleep(0.5)
        assert not any(_alive(p) for p in workers[1:])
    finally:
        if proc.poll() is None:
            _kill_tree(proc.pid)
    assert not (out / 'result.pt').exists()
    stopped_at = int((ck / 'latest').read_text().strip().split('-')[1])
    assert 10 <= stopped_at < 20
    _run(_torchrun(2) + [*MLP, '--out', str(out), '--ckdir', str(ck), '--resume', str(ck)])
    resumed = _result(out)
    assert resumed['steps_run'] == 20 - stopped_at
    assert len(resumed['history']) == 20      # the history came back with the checkpoint
    assert _max_weight_diff(resumed['weights'], two['weights']) < RESUME_ATOL
    assert _losses(resumed) == pytest.approx(_losses(two), rel=1e-6)


@pytest.mark.slow
def test_torchrun_elastic_restart_continues_from_the_latest_checkpoint(mlp_runs, tmp_path):
    _, _, two = mlp_runs
    ck, out = tmp_path / 'ck', tmp_path / 'out'
    # rank 1 dies at step 12 of the first attempt; torchrun restarts both workers (the c10d
    # rendezvous re-forms the group; the static --master-port one does not, torch 2.13)
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node', '2',
           '--rdzv-backend', 'c10d', '--rdzv-endpoint', f'127.0.0.1:{_port()}',
           '--max-restarts', '1', WORKER]
    _run(cmd + [*MLP, '--out', str(out), '--ckdir', str(ck), '--crash-at', '12'])
    res = _result(out)
    assert res['steps_run'] == 10            # the restarted workers began at step 11
    assert _max_weight_diff(res['weights'], two['weights']) < RESUME_ATOL


@pytest.mark.slow
def test_c10d_rendezvous_of_two_nodes_trains(mlp_runs, tmp_path):
    _, one, _ = mlp_runs
    port = _port()
    nodes = [subprocess.Popen(
        [sys.executable, '-m', 'torch.distributed.run', '--nnodes', '2', '--nproc-per-node',
         '1', '--rdzv-backend', 'c10d', '--rdzv-endpoint', f'127.0.0.1:{port}', '--rdzv-id',
         'qail-test', WORKER, *MLP, '--out', str(tmp_path / 'out')],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)]
    logs = [p.communicate(timeout=240)[0] for p in nodes]
    assert all(p.returncode == 0 for p in nodes), logs[0][-2000:] + logs[1][-2000:]
    res = _result(tmp_path / 'out')
    assert res['world'] == 2
    for x, y in zip(_losses(one), _losses(res)):
        assert abs(x - y) <= LOSS_RTOL * abs(x)


@pytest.mark.slow
def test_vla_student_two_ranks_give_the_loss_curve_of_one(tmp_path):
    pytest.importorskip('transformers')
    args = ['--model', 'vla', '--steps', '5', '--batch', '8']
    _run([sys.executable, WORKER, *args, '--out', str(tmp_path / 'one')])
    _run(_torchrun(2) + [*args, '--out', str(tmp_path / 'two')])
    one, two = _result(tmp_path / 'one'), _result(tmp_path / 'two')
    assert two['world'] == 2
    a, b = _losses(one), _losses(two)
    assert len(a) == 5 and a[-1] < a[0]
    for x, y in zip(a, b):
        assert abs(x - y) <= LOSS_RTOL * abs(x)
    assert _max_weight_diff(one['weights'], two['weights']) < WEIGHT_ATOL


@pytest.mark.slow
def test_physics_bc_two_ranks_give_the_loss_curve_of_one(tmp_path):
    args = ['--model', 'bc', '--steps', '15', '--batch', '64']
    _run([sys.executable, WORKER, *args, '--out', str(tmp_path / 'one')])
    _run(_torchrun(2) + [*args, '--out', str(tmp_path / 'two')])
    one, two = _result(tmp_path / 'one'), _result(tmp_path / 'two')
    a, b = _losses(one), _losses(two)
    assert len(a) == 15 and a[-1] < a[0] and two['world'] == 2
    for x, y in zip(a, b):
        assert abs(x - y) <= LOSS_RTOL * abs(x)
    assert _max_weight_diff(one['weights'], two['weights']) < WEIGHT_ATOL


@pytest.mark.slow
def test_qail_ros_train_runs_unchanged_under_torchrun(tmp_path):
    """The command line itself under torchrun: two ranks train, rank 0 alone writes."""
    pytest.importorskip('dm_control')
    from qail_ros.physics.models import shipped_tasks
    if 'cartpole-balance' not in shipped_tasks():
        pytest.skip('no shipped FP policy for cartpole-balance')
    out = tmp_path / 'run'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node', '2',
           '--master-addr', '127.0.0.1', '--master-port', str(_port()), '-m', 'qail_ros.cli',
           'train', '--task', 'cartpole-balance', '--steps', '6', '--batch-size', '64',
           '--onpolicy-every', '3', '--onpolicy-episodes', '1', '--onpolicy-max-steps', '50',
           '--expert-episodes', '1', '--fp-episodes', '1', '--eval-episodes', '1',
           '--no-progress', '--json', '-o', str(out)]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summaries = [line for line in r.stdout.splitlines() if line.startswith('{')]
    assert len(summaries) == 1                  # rank 0 alone reports
    import json
    summary = json.loads(summaries[0])
    assert summary['processes'] == 2 and summary['steps'] == 6
    assert summary['onpolicy_states'] == 100    # per rank: 2 rounds x 1 episode x 50 steps
    assert (out / 'policy.safetensors').is_file() and (out / 'checkpoints' / 'latest').is_file()


@pytest.mark.slow
def test_vla_and_cilrs_behaviour_cloning_run_under_torchrun(tmp_path):
    """The VLA BC loop (whole model + auxiliary heads, branches unused by some batches) gives
    the 1-rank curve; CILRS BC (BatchNorm statistics per rank on CPU, so no equality) trains."""
    pytest.importorskip('transformers')
    args = ['--model', 'vla_bc', '--steps', '3', '--batch', '8']
    _run([sys.executable, WORKER, *args, '--out', str(tmp_path / 'one')])
    _run(_torchrun(2) + [*args, '--out', str(tmp_path / 'two')])
    a, b = _losses(_result(tmp_path / 'one')), _losses(_result(tmp_path / 'two'))
    assert len(a) == 3
    for x, y in zip(a, b):
        assert abs(x - y) <= LOSS_RTOL * abs(x)
    _run(_torchrun(2) + ['--model', 'cilrs_bc', '--steps', '4', '--batch', '16', '--out',
                         str(tmp_path / 'cilrs')])
    res = _result(tmp_path / 'cilrs')
    assert res['world'] == 2 and len(res['history']) == 4
