"""Output of benchmarks and commands: a readable table, then (with --json) one JSON object on the
last line; the facts (machine, commit) that make a result reproducible; result files."""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from typing import Any, Sequence


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]],
          file=None) -> str:
    """Format (and print) a plain-text table; floats get 3 significant decimals."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f'{v:.3f}' if abs(v) < 1000 else f'{v:.1f}'
        return str(v)
    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h))
              for i, h in enumerate(headers)]
    lines = [title, '  '.join(str(h).ljust(w) for h, w in zip(headers, widths)),
             '  '.join('-' * w for w in widths)]
    lines += ['  '.join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    text = '\n'.join(lines)
    print(text, file=file or sys.stdout, flush=True)
    return text


def environment() -> dict[str, Any]:
    """Facts that make a result reproducible: machine, python, commit."""
    try:
        commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {'machine': platform.machine(), 'python': platform.python_version(),
            'processor': platform.processor() or platform.machine(), 'commit': commit}


def git_commit() -> str:
    """The checked-out commit for a result file: 'abc1234', 'abc1234+uncommitted-changes' when
    tracked files differ from it, 'uncommitted' outside a commit, 'unknown' without git."""
    try:
        sha = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return 'unknown'
    if not sha:
        return 'uncommitted'
    return f'{sha}+uncommitted-changes' if dirty else sha


def emit_json(result: dict[str, Any]) -> None:
    """The last line of a --json run."""
    print(json.dumps(result, sort_keys=False, default=float), flush=True)


#: a results markdown file keeps everything from this line on when its benchmark rewrites it
ANALYSIS_MARKER = '<!-- analysis: kept when the benchmark rewrites this file -->'


def write_markdown(path, text: str) -> None:
    """Write a benchmark's generated markdown, keeping the hand-written analysis that follows
    ANALYSIS_MARKER in the existing file (a re-run must not erase it)."""
    from pathlib import Path
    path = Path(path)
    kept = ''
    if path.is_file():
        old = path.read_text()
        if ANALYSIS_MARKER in old:
            kept = '\n' + old[old.index(ANALYSIS_MARKER):]
    path.write_text(text + kept)


def write_results(directory, name: str, result: dict[str, Any], markdown: str) -> dict[str, str]:
    """DIR/NAME.json (the whole result) and DIR/NAME.md (write_markdown); returns both paths."""
    from pathlib import Path
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f'{name}.json').write_text(json.dumps(result, indent=1) + '\n')
    write_markdown(directory / f'{name}.md', markdown)
    return {k: str(directory / f'{name}.{k}') for k in ('json', 'md')}


def csv_list(values: Sequence[str] | None) -> list[str]:
    """Values of a repeatable, comma-separated option: ['a,b', 'c'] -> ['a', 'b', 'c']."""
    out: list[str] = []
    for v in values or []:
        out += [x.strip() for x in v.split(',') if x.strip()]
    return out
