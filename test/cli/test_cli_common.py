"""qail_ros.cli.common: the arguments several commands share, and the train flags' table."""
import pytest

from qail_ros.cli import build_parser


def _parse(argv):
    return build_parser().parse_args(argv)


@pytest.mark.parametrize('argv', [
    ['train', '-o', 'out'], ['train-expert', '-o', 'out'], ['eval', '--policy', 'fp'],
    ['train-fp', '--teacher', 'dir'], ['train-vla', '--teacher', 'dir', '--data', 'd', '-o', 'o'],
])
def test_every_computing_command_has_threads_and_json(argv):
    args = _parse(argv + ['--threads', '3', '--json'])
    assert args.threads == 3 and args.json is True
    assert _parse(argv).threads == 1 and _parse(argv).json is False


def test_out_is_required_where_a_command_writes():
    for argv in (['train'], ['train-expert'], ['train-vla', '--teacher', 't', '--data', 'd']):
        with pytest.raises(SystemExit):
            _parse(argv)


def test_progress_flag_only_on_the_long_trainers():
    assert _parse(['train', '-o', 'o', '--no-progress']).no_progress is True
    assert _parse(['train-expert', '-o', 'o', '--no-progress']).no_progress is True
    with pytest.raises(SystemExit):
        _parse(['eval', '--policy', 'fp', '--no-progress'])


def test_task_help_names_every_kind_of_task(capsys):
    from qail_ros.physics.tasks import TASK_HELP
    with pytest.raises(SystemExit):
        _parse(['eval', '--help'])
    text = ' '.join(capsys.readouterr().out.split())
    assert ' '.join(TASK_HELP.split()) in text
    assert 'trained on)' in text


def test_train_flags_override_exactly_their_config_fields(tmp_path):
    from qail_ros.cli.train_cmd import CONFIG_FLAGS, build_config
    from qail_ros.qail.config import TrainConfig
    fields = {f for f, _, _ in CONFIG_FLAGS}
    assert fields <= set(TrainConfig.__dataclass_fields__)
    args = _parse(['train', '-o', str(tmp_path), '--task', 'cartpole-balance', '--method',
                   'qbc', '--bits', 'w8a8', '--steps', '7', '--seed', '3', '--lr', '0.01',
                   '--batch-size', '16', '--weighting', 'none', '--onpolicy-every', '0',
                   '--onpolicy-episodes', '4', '--onpolicy-max-steps', '9'])
    cfg = build_config(args)
    assert (cfg.method, cfg.bits, cfg.steps, cfg.seed, cfg.lr, cfg.batch_size, cfg.weighting,
            cfg.onpolicy_every, cfg.onpolicy_episodes, cfg.onpolicy_max_steps) == (
        'qbc', 'w8a8', 7, 3, 0.01, 16, 'none', 0, 4, 9)
    default = build_config(_parse(['train', '-o', str(tmp_path), '--task', 'cartpole-balance']))
    assert (default.steps, default.lr, default.onpolicy_every) == (2000, 3e-4, 250)


def test_data_arguments_shared_by_the_trainers():
    a = _parse(['train', '-o', 'o', '--data', 'd', '--expert-data', 'e', '--split', 'val'])
    b = _parse(['train-vla', '--teacher', 't', '--data', 'd', '--expert-data', 'e', '--split',
                'val', '-o', 'o'])
    for args in (a, b):
        assert (args.data, args.expert_data, args.split) == ('d', 'e', 'val')
    with pytest.raises(SystemExit):
        _parse(['train-vla', '--teacher', 't', '-o', 'o'])     # --data is required there


def test_monitor_options_parse_as_before_and_show_in_groups(capsys):
    args = _parse(['monitor', '--rate', '5', '--run-seconds', '2', '--source', 'proc'])
    assert (args.rate, args.run_seconds, args.source) == (5.0, 2.0, 'proc')
    with pytest.raises(SystemExit):
        _parse(['monitor', '--help'])
    out = capsys.readouterr().out
    groups = ['power source and policy timing:', 'report:', '--image-policy: sessions run here']
    assert [out.index(g) for g in groups] == sorted(out.index(g) for g in groups)
    assert out.rindex('--run-seconds') > out.index(groups[2])
