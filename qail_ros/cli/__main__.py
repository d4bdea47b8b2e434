"""`python -m qail_ros.cli` == `qail-ros`."""
import sys

from qail_ros.cli import main

if __name__ == '__main__':
    sys.exit(main())
