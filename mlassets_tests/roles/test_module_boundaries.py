"""The roles and the library know nothing of the embedded twins: a role module holds its
interface, its contract types and the Azure implementation, and only defs/resources.py picks a
twin. (Twins may import roles: they implement the roles' interfaces.)"""

import ast
from pathlib import Path

import mlassets

PACKAGE = Path(mlassets.__file__).parent
#: Besides defs/resources.py, the entry points that build twins themselves.
MAY_IMPORT_TWINS = {"defs/resources.py", "cli", "demo.py", "simulate.py", "twins"}


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def test_only_the_resources_module_reaches_the_twins():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative in MAY_IMPORT_TWINS or relative.split("/")[0] in MAY_IMPORT_TWINS:
            continue
        twins = sorted(m for m in imported_modules(path) if m.startswith("mlassets.twins"))
        if twins:
            offenders.append(f"{relative}: {', '.join(twins)}")
    assert not offenders, offenders
