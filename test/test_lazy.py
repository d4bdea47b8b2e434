"""qail_ros.lazy.lazy_exports: a package's names import their modules on first use only."""
import sys

import pytest

from qail_ros.lazy import lazy_exports


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A package `lazypkg` whose `value` lives in lazypkg.heavy, imported lazily."""
    root = tmp_path / 'lazypkg'
    root.mkdir()
    (root / '__init__.py').write_text(
        'from qail_ros.lazy import lazy_exports\n'
        "__getattr__, __all__ = lazy_exports(__name__, {'.heavy': ('value', 'other'),\n"
        "                                               'json': ('dumps',)})\n")
    (root / 'heavy.py').write_text('value = 42\nother = "x"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    yield 'lazypkg'
    for name in ('lazypkg', 'lazypkg.heavy'):
        sys.modules.pop(name, None)


def test_names_import_their_module_on_first_use_only(package):
    import importlib
    pkg = importlib.import_module(package)
    assert pkg.__all__ == ['value', 'other', 'dumps']
    assert 'lazypkg.heavy' not in sys.modules
    assert pkg.value == 42
    assert 'lazypkg.heavy' in sys.modules
    assert vars(pkg)['value'] == 42          # kept: the hook does not run again for it
    assert pkg.dumps is __import__('json').dumps   # absolute module names work too


def test_unknown_name_is_an_attribute_error_naming_the_package(package):
    import importlib
    pkg = importlib.import_module(package)
    with pytest.raises(AttributeError, match="module 'lazypkg' has no attribute 'nope'"):
        pkg.nope
    assert not hasattr(pkg, 'nope')


def test_lazy_exports_returns_the_names_in_order():
    getattr_, names = lazy_exports('qail_ros', {'.a': ('x', 'y'), '.b': ('z',)})
    assert names == ['x', 'y', 'z']
    assert callable(getattr_)
