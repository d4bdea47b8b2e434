"""qail_ros.report: the table, the JSON last line and the commit a result names."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from qail_ros.report import emit_json, git_commit, table

ROOT = Path(__file__).resolve().parents[1]


def test_table_aligns_columns_and_rounds_floats(capsys):
    text = table('T', ['name', 'value'], [['a', 1.23456], ['long name', 12345.678]])
    assert text.splitlines() == ['T', 'name       value  ', '---------  -------',
                                 '        a    1.235', 'long name  12345.7']
    assert capsys.readouterr().out == text + '\n'


def test_emit_json_is_one_line(capsys):
    emit_json({'a': 1, 'b': [1.5]})
    out = capsys.readouterr().out
    assert out.count('\n') == 1 and json.loads(out) == {'a': 1, 'b': [1.5]}


@pytest.mark.skipif(shutil.which('git') is None, reason='git is not installed')
def test_git_commit_names_the_checkout(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    head = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True,
                          text=True).stdout.strip()
    if not head:
        pytest.skip('the source tree is not a git checkout')
    assert re.fullmatch(re.escape(head) + r'(\+uncommitted-changes)?', git_commit())
    monkeypatch.chdir(tmp_path)             # not a repository
    assert git_commit() == 'uncommitted'
