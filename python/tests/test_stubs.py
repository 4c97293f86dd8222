"""The type stubs name every class, function and method the extension has."""

import ast
import inspect
import os

import efa_transport
from efa_transport import _native

STUB = os.path.join(os.path.dirname(efa_transport.__file__), "_native.pyi")


def stub_names():
    tree = ast.parse(open(STUB).read())
    top, members = set(), {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            top.add(node.name)
            members[node.name] = {
                n.name if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) else n.target.id
                for n in node.body
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                or (isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name))
            }
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            top.add(node.target.id)
    return top, members


def test_every_public_name_has_a_stub():
    top, members = stub_names()
    public = {n for n in dir(_native) if not n.startswith("_")} | {"__version__"}
    assert public - top == set()
    for name in public:
        obj = getattr(_native, name)
        if inspect.isclass(obj) and not issubclass(obj, BaseException):
            own = {m for m in vars(obj) if not m.startswith("__") or m in ("__len__", "__enter__", "__exit__")}
            missing = own - members[name] - {"_rust_loop_ns"} - {"__init__"}
            # Enum members and generated helpers aside, every method is typed.
            missing = {m for m in missing if not m.isupper()}
            assert missing == set(), f"{name}: {sorted(missing)}"


def test_docstrings():
    for name in ["Engine", "Segment", "RemoteSegment", "Request", "Batch", "TransferEngine"]:
        cls = getattr(_native, name)
        assert cls.__doc__, name
        for m, f in vars(cls).items():
            if not m.startswith("_") and callable(f):
                assert f.__doc__, f"{name}.{m}"
