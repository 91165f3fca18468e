"""The error tree is closed and the public surface is explicit (issue 10, point 4)."""

import ast
import builtins
import inspect
from pathlib import Path

import semid_index
from semid_index import errors

PACKAGE = Path(semid_index.__file__).parent


def _public_classes(module) -> list[str]:
    return sorted(n for n, v in vars(module).items()
                  if not n.startswith("_") and inspect.isclass(v) and v.__module__ == module.__name__)


def test_errors_all_is_every_error_class_sorted():
    assert errors.__all__ == _public_classes(errors)
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.SemanticIdError), name
        # each is also the builtin that describes it, so callers may catch either
        assert cls is errors.SemanticIdError or any(
            issubclass(cls, b) for b in (ValueError, KeyError, RuntimeError, OSError,
                                         ImportError)), name


def test_package_all_is_every_public_name_sorted():
    lazy = set(semid_index._LAZY)
    eager = {n for n, v in vars(semid_index).items()
             if not n.startswith("_") and not inspect.ismodule(v) and n != "annotations"}
    assert semid_index.__all__ == sorted(semid_index.__all__)
    assert set(semid_index.__all__) == eager | lazy | {"__version__"}
    for name in semid_index.__all__:
        assert getattr(semid_index, name) is not None
    for module in (semid_index.errors,):
        assert set(module.__all__) <= set(semid_index.__all__)


def _raised_names(tree: ast.AST):
    """(line, name, enclosing function) of every ``raise Name(...)`` / ``raise Name``."""
    parents = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name):
                fn = node
                while fn in parents and not isinstance(fn, (ast.FunctionDef,
                                                            ast.AsyncFunctionDef)):
                    fn = parents[fn]
                yield node.lineno, exc.id, getattr(fn, "name", "")


def test_the_library_raises_no_builtin_exception_of_its_own():
    """Every ``raise`` names one of semid_index.errors' classes (NotImplementedError marks
    abstract methods; a module's __getattr__ must raise AttributeError)."""
    bad = []
    for path in PACKAGE.rglob("*.py"):
        for line, name, fn in _raised_names(ast.parse(path.read_text())):
            builtin = isinstance(getattr(builtins, name, None), type) and \
                issubclass(getattr(builtins, name), BaseException)
            allowed = name == "NotImplementedError" or (name == "AttributeError"
                                                        and fn == "__getattr__")
            if builtin and not allowed:
                bad.append(f"{path.relative_to(PACKAGE)}:{line} raises {name}")
    assert bad == []


def test_the_cli_catches_only_the_librarys_errors():
    """The command modules (not _cli_io, which reads files and wraps their errors) catch
    SemanticIdError or a subclass of it, nothing else, and never import the database layer."""
    caught = []
    for name in ("cli.py", "_cli_common.py", "_cli_read.py"):
        source = (PACKAGE / name).read_text()
        caught += [ast.unparse(h.type) if h.type is not None else "<bare>"
                   for h in ast.walk(ast.parse(source)) if isinstance(h, ast.ExceptHandler)]
        assert "sqlalchemy" not in source, name
    assert "SemanticIdError" in caught
    for name in caught:
        assert name in errors.__all__, caught
