"""Style gate, as ament_flake8 does for ROS packages: flake8 at 99 columns over the package."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_flake8_is_clean():
    pytest.importorskip('flake8', reason='flake8 not installed (it is in requirements.txt)')
    paths = [p for p in ('qail_ros', 'test', 'launch', 'scripts', 'bench', 'setup.py')
             if (ROOT / p).exists()]
    proc = subprocess.run([sys.executable, '-m', 'flake8', '--max-line-length', '99', *paths],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
