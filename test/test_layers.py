"""The layers of qail_ros, enforced (issue #14 item 4).

A module may import only from its own top-level package or a LOWER layer, never a higher one,
never a sibling package of the same layer (unless ALLOWED_SIBLINGS lists the pair), never another
module's `_private` name (dunder names are fine), and no two modules may import each other
through any chain (a circle). Every import counts: module level, inside functions, under
`if TYPE_CHECKING:`. Tests are not checked.

The checker works on a {module name: source} mapping, so the synthetic cases below exercise it
on a few lines of code each.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = 'qail_ros'

#: lowest first. A top-level module or package of qail_ros that is not here fails the test:
#: a new package has to be given its place.
LAYERS: list[tuple[int, str, tuple[str, ...]]] = [
    # no.  layer        top-level packages / modules of qail_ros
    (1, 'core',        ('', 'errors', 'messages', 'msg_defs', 'share', 'policy_io', 'image',
                        'report', 'lazy')),
    (2, 'runtime',     ('runtime', 'training')),
    (3, 'bag',         ('bag',)),
    (4, 'recording',   ('recording',)),
    (5, 'dataset',     ('dataset',)),
    (6, 'engines',     ('engines',)),
    (7, 'quant',       ('quant',)),
    (8, 'qail',        ('qail',)),
    (9, 'domains',     ('policies', 'cilrs', 'openvla', 'physics', 'monitor')),
    (10, 'apps',       ('driving', 'manipulation', 'replay')),
    (11, 'nodes',      ('nodes',)),
    (12, 'launching',  ('launching',)),
    (13, 'bench',      ('bench',)),
    (14, 'cli',        ('cli',)),
]
# ('' is the root package `qail_ros/__init__.py`.)

#: (importer, imported) top-level units of one layer that may import each other's modules.
#: The core is one layer of small modules that build on each other.
_CORE = LAYERS[0][2]
ALLOWED_SIBLINGS: set[tuple[str, str]] = {(a, b) for a in _CORE for b in _CORE}

LAYER_OF: dict[str, tuple[int, str]] = {
    unit: (number, name) for number, name, units in LAYERS for unit in units}


@dataclass(frozen=True, order=True)
class Violation:
    kind: str        # 'layer' | 'sibling' | 'private' | 'circle' | 'unmapped'
    module: str      # the importing module (for a circle: its first module)
    target: str      # what it imports (for a circle: the whole circle)
    line: int = 0

    def __str__(self) -> str:
        where = f'{self.module}:{self.line}' if self.line else self.module
        return f'{self.kind}: {where} -> {self.target}'

    @property
    def key(self) -> tuple[str, str, str]:
        """The violation without its line number (stable across unrelated edits)."""
        return (self.kind, self.module, self.target)


def unit_of(module: str) -> str:
    """'qail_ros.bag.writer' -> 'bag'; 'qail_ros' -> ''."""
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else ''


def _is_private(name: str) -> bool:
    return name.startswith('_') and not (name.startswith('__') and name.endswith('__'))


def package_sources(root: Path = ROOT, package: str = PACKAGE) -> dict[str, str]:
    """{'qail_ros.x.y': source} for every .py file of the package (an __init__ is its package)."""
    sources = {}
    for path in sorted((root / package).rglob('*.py')):
        parts = list(path.relative_to(root).with_suffix('').parts)
        if parts[-1] == '__init__':
            parts.pop()
        sources['.'.join(parts)] = path.read_text()
    return sources


def _packages(sources: dict[str, str]) -> set[str]:
    """Module names that are packages: a name with submodules, or a given '<pkg>.__init__'."""
    packages = set()
    for name in sources:
        parts = name.split('.')
        for i in range(1, len(parts)):
            packages.add('.'.join(parts[:i]))
    return packages


@dataclass
class _Import:
    target: str              # the module imported (longest known module name)
    line: int
    names: tuple[str, ...]   # for `from target import a, b`: a, b that are not modules


class _Scan(ast.NodeVisitor):
    """All imports of one module (any depth) and its accesses `alias._private`."""

    def __init__(self, module: str, is_package: bool, known: set[str]):
        self.module = module
        self.package = module if is_package else module.rpartition('.')[0]
        self.known = known
        self.imports: list[_Import] = []
        self.aliases: dict[str, str] = {}      # local name -> module it is bound to
        self.private_uses: list[tuple[str, str, int]] = []   # (module, name, line)

    def _resolve_from(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ''
        base = self.package.split('.')
        if node.level > 1:
            base = base[:len(base) - (node.level - 1)]
        return '.'.join(base + ([node.module] if node.module else []))

    def _known_prefix(self, name: str) -> str | None:
        parts = name.split('.')
        for i in range(len(parts), 0, -1):
            candidate = '.'.join(parts[:i])
            if candidate in self.known:
                return candidate
        return None

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            target = self._known_prefix(alias.name)
            if target is not None:
                self.imports.append(_Import(target, node.lineno, ()))
            if alias.asname:
                self.aliases[alias.asname] = alias.name
            else:
                top = alias.name.split('.')[0]
                self.aliases[top] = top
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self._resolve_from(node)
        names = []
        for alias in node.names:
            full = f'{base}.{alias.name}'
            if full in self.known:            # a submodule
                self.imports.append(_Import(full, node.lineno, ()))
                self.aliases[alias.asname or alias.name] = full
            elif alias.name != '*':
                names.append(alias.name)
        if names or not any(f'{base}.{a.name}' in self.known for a in node.names):
            target = self._known_prefix(base)
            if target is not None:
                self.imports.append(_Import(target, node.lineno, tuple(names)))
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        chain = []
        value: ast.expr = node
        while isinstance(value, ast.Attribute):
            chain.append(value.attr)
            value = value.value
        if isinstance(value, ast.Name) and value.id in self.aliases:
            path = self.aliases[value.id]
            for attr in reversed(chain):
                if f'{path}.{attr}' in self.known:
                    path = f'{path}.{attr}'
                    continue
                if _is_private(attr) and path in self.known:
                    self.private_uses.append((path, attr, node.lineno))
                break
            return           # the inner Attribute nodes are part of this chain
        self.generic_visit(node)


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return sorted(found)


def check(sources: dict[str, str], package: str = PACKAGE) -> list[Violation]:
    """Every layer, sibling, private-name and circle violation in `sources`, sorted."""
    known = set(sources) | _packages(sources)
    packages = _packages(sources)
    violations: set[Violation] = set()
    graph: dict[str, set[str]] = {name: set() for name in sources}
    for module, source in sources.items():
        unit = unit_of(module)
        if unit not in LAYER_OF:
            violations.add(Violation('unmapped', module, f'{package}.{unit}'))
            continue
        scan = _Scan(module, module in packages, known)
        scan.visit(ast.parse(source, filename=module))
        for imp in scan.imports:
            if not (imp.target == package or imp.target.startswith(package + '.')):
                continue
            if imp.target != module and imp.target in sources:
                graph[module].add(imp.target)
            for name in imp.names:
                if _is_private(name) and imp.target != module:
                    violations.add(Violation('private', module, f'{imp.target}.{name}',
                                             imp.line))
            other = unit_of(imp.target)
            hidden = [p for p in imp.target.split('.')[1:] if _is_private(p)]
            if hidden and not module.startswith(imp.target.rpartition('.')[0] + '.'):
                violations.add(Violation('private', module, imp.target, imp.line))
            if other == unit or other not in LAYER_OF:
                continue
            mine, theirs = LAYER_OF[unit][0], LAYER_OF[other][0]
            if theirs > mine:
                violations.add(Violation('layer', module, imp.target, imp.line))
            elif theirs == mine and (unit, other) not in ALLOWED_SIBLINGS:
                violations.add(Violation('sibling', module, imp.target, imp.line))
        for target, name, line in scan.private_uses:
            if target != module and (target == package or target.startswith(package + '.')):
                violations.add(Violation('private', module, f'{target}.{name}', line))
    for circle in _circles(graph):
        violations.add(Violation('circle', circle[0], ' <-> '.join(circle)))
    return sorted(violations)


def report(violations: list[Violation]) -> str:
    return '\n'.join(str(v) for v in violations)


# --- the real package -------------------------------------------------------------------------

def test_every_package_has_a_layer():
    units = {unit_of(name) for name in package_sources()}
    assert units <= set(LAYER_OF), f'not in LAYERS: {sorted(units - set(LAYER_OF))}'


def test_the_package_is_layered():
    violations = check(package_sources())
    assert not violations, 'layer violations (see the map in test/test_layers.py):\n' + \
        report(violations)


def test_adding_a_forbidden_import_to_the_real_package_fails():
    sources = package_sources()
    before = {v.key for v in check(sources)}
    sources['qail_ros.errors'] += '\n\ndef _late():\n    from qail_ros.cli import main\n'
    new = {v.key for v in check(sources)} - before
    # the forbidden import itself, and the circle it closes (the CLI imports qail_ros.errors)
    assert new == {('layer', 'qail_ros.errors', 'qail_ros.cli'),
                   ('circle', 'qail_ros.cli', 'qail_ros.cli <-> qail_ros.errors')}


# --- the checker, on synthetic packages ---------------------------------------------------------

def _keys(sources: dict[str, str]) -> set[tuple[str, str, str]]:
    return {v.key for v in check(sources)}


def test_a_lower_layer_importing_a_higher_one_fails_at_module_level():
    assert _keys({
        'qail_ros.bag.writer': 'from qail_ros.dataset.builder import build\n',
        'qail_ros.dataset.builder': 'def build():\n    pass\n',
    }) == {('layer', 'qail_ros.bag.writer', 'qail_ros.dataset.builder')}


def test_a_lower_layer_importing_a_higher_one_fails_inside_a_function():
    assert _keys({
        'qail_ros.engines.base': 'def f():\n    if True:\n        import qail_ros.nodes.x\n',
        'qail_ros.nodes.x': '',
    }) == {('layer', 'qail_ros.engines.base', 'qail_ros.nodes.x')}


def test_a_higher_layer_importing_a_lower_one_passes():
    assert _keys({
        'qail_ros.nodes.x': 'from qail_ros.engines import base\nfrom qail_ros.errors import E\n'
                            'import qail_ros.bag.writer as w\n',
        'qail_ros.engines': '', 'qail_ros.engines.base': '', 'qail_ros.errors': 'E = 1\n',
        'qail_ros.bag': '', 'qail_ros.bag.writer': '',
    }) == set()


def test_relative_imports_are_resolved():
    assert _keys({
        'qail_ros.bag': 'from ..nodes import x\n',           # an __init__: its own package
        'qail_ros.bag.writer': 'from ..cli import run\nfrom . import reader\n',
        'qail_ros.bag.reader': '',
        'qail_ros.nodes.x': '', 'qail_ros.cli': 'def run():\n    pass\n',
    }) == {('layer', 'qail_ros.bag', 'qail_ros.nodes.x'),
           ('layer', 'qail_ros.bag.writer', 'qail_ros.cli')}


def test_a_sibling_package_of_the_same_layer_fails_unless_allowed():
    sources = {'qail_ros.physics.tasks': 'from qail_ros.cilrs.model import build\n',
               'qail_ros.cilrs.model': 'def build():\n    pass\n'}
    assert _keys(sources) == {('sibling', 'qail_ros.physics.tasks', 'qail_ros.cilrs.model')}
    core = {'qail_ros.messages': 'from qail_ros.msg_defs import carla\n',
            'qail_ros.msg_defs.carla': ''}
    assert _keys(core) == set()
    ALLOWED_SIBLINGS.add(('physics', 'cilrs'))
    try:
        assert _keys(sources) == set()
    finally:
        ALLOWED_SIBLINGS.discard(('physics', 'cilrs'))


@pytest.mark.parametrize('code', [
    'from qail_ros.quant.integer import _WeightOnlyBase\n',
    'from .integer import _WeightOnlyBase\n',
    'import qail_ros.quant.integer\nqail_ros.quant.integer._WeightOnlyBase\n',
    'import qail_ros.quant.integer as qi\n\ndef f():\n    return qi._WeightOnlyBase\n',
    'from qail_ros.quant import integer\nclass A(integer._WeightOnlyBase):\n    pass\n',
    'def f():\n    from . import integer\n    return integer._WeightOnlyBase()\n',
])
def test_another_modules_private_name_fails(code):
    assert _keys({
        'qail_ros.quant.api': code,
        'qail_ros.quant.integer': 'class _WeightOnlyBase:\n    pass\n',
    }) == {('private', 'qail_ros.quant.api', 'qail_ros.quant.integer._WeightOnlyBase')}


def test_own_private_names_public_names_and_dunders_pass():
    assert _keys({
        'qail_ros.quant.api': 'from qail_ros.quant.integer import Int, __all__\n'
                              'from qail_ros.quant import integer\n'
                              'x = integer.Int, integer.__doc__\n'
                              '_mine = 1\nimport qail_ros.quant.api as me\ny = me._mine\n'
                              'import os\nos._exit\n',
        'qail_ros.quant.integer': 'class Int:\n    pass\n',
    }) == set()


def test_an_import_circle_fails_at_any_level():
    assert _keys({
        'qail_ros.quant.api': 'from qail_ros.quant.awq import awq\n',
        'qail_ros.quant.awq': 'def awq():\n    from qail_ros.quant import integer\n',
        'qail_ros.quant.integer': 'def f():\n    import qail_ros.quant.api\n',
        'qail_ros.quant.lora': 'from qail_ros.quant.api import x\n',   # on no circle
    }) == {('circle', 'qail_ros.quant.api',
            'qail_ros.quant.api <-> qail_ros.quant.awq <-> qail_ros.quant.integer')}


def test_a_package_without_a_layer_fails():
    assert _keys({'qail_ros.newthing.x': ''}) == {
        ('unmapped', 'qail_ros.newthing.x', 'qail_ros.newthing')}


def test_a_private_module_is_its_packages_own():
    sources = {'qail_ros.quant._impl': 'X = 1\n',
               'qail_ros.quant.api': 'from qail_ros.quant._impl import X\n',
               'qail_ros.qail.trainer': 'from qail_ros.quant import _impl\n'}
    assert _keys(sources) == {('private', 'qail_ros.qail.trainer', 'qail_ros.quant._impl')}
