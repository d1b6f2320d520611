"""The import layers of docs/ARCHITECTURE.md hold: every module's imports (read with ast, lazy
imports inside functions included) name only the project packages its package's row allows.

The table has one row per package (a top-level folder, or a top-level script) and no per-file
exceptions; every package with Python files has a row, and the rows allow no import cycle. Beside
the table, two rules: no module below the top rows (the `everything` rows: the entry scripts,
scripts/, tests/) imports a module of theirs, lazily or not, also not a script of a folder by its
own name (as `sys.path` tricks allow); and nothing but scripts/ and tests/ imports the lab,
experiments/.

An import is an `import` / `from ... import` statement (relative ones resolved), a call of
`importlib.import_module` or `__import__` with a constant name, or a constant `'module:attribute'`
string (the form the distiller registry and the lab import by name)."""
import ast
import os
import re
import shutil
import subprocess

import pytest

from conftest import ROOT

TABLE_HEADING = '## Layers'
EVERYTHING = 'everything'


def layer_table(text: str) -> dict:
    """{package: set of packages it may import, or EVERYTHING} from the first table after the
    `## Layers` heading; a package is `name/` (a folder) or `name.py` (a top-level script)."""
    lines = text[text.index(TABLE_HEADING):].splitlines()[1:]
    rows = _first_table(lines)[2:]  # header and separator skipped
    table = {}
    for row in rows:
        cells = [cell.strip() for cell in row.strip().strip('|').split('|')]
        owners, allowed = re.findall(r'`([^`]+)`', cells[0]), cells[1]
        assert owners, f'row without a package: {row}'
        targets = EVERYTHING if allowed == EVERYTHING else {_package(t) for t in re.findall(r'`([^`]+)`', allowed)}
        assert targets == EVERYTHING or targets or allowed == 'nothing', f'unreadable row: {row}'
        for owner in owners:
            assert re.fullmatch(r'[A-Za-z_][\w]*/|[A-Za-z_][\w]*\.py', owner), \
                f'{owner!r}: a row names whole packages (name/ or a top-level name.py), not files in them'
            name = _package(owner)
            assert name not in table, f'{owner} has two rows'
            table[name] = targets
    return table


def _first_table(lines):
    start = next(i for i, line in enumerate(lines) if line.startswith('|'))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith('|')), len(lines))
    return lines[start:end]


def _package(entry: str) -> str:
    return entry.rstrip('/').removesuffix('.py')


def _git_files(root: str):
    """Paths of the files git tracks or would add (what a commit takes) when root is a checkout's
    top folder, else None."""
    if shutil.which('git') is None:
        return None
    top = subprocess.run(['git', '-C', root, 'rev-parse', '--show-toplevel'], capture_output=True, text=True)
    if top.returncode != 0 or not os.path.samefile(top.stdout.strip(), root):
        return None
    listed = subprocess.run(['git', '-C', root, 'ls-files', '--cached', '--others', '--exclude-standard'],
                            capture_output=True, text=True, check=True)
    return sorted(set(listed.stdout.splitlines()))


def python_files(root: str) -> list:
    """Repository-relative paths of the project's Python files: in a git checkout those git holds
    or would add (scratch scripts in ignored folders such as local/ are nobody's package),
    elsewhere every one outside hidden folders."""
    in_git = _git_files(root)
    if in_git is not None:
        return [os.path.normpath(f) for f in in_git if f.endswith('.py') and os.path.isfile(os.path.join(root, f))]
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.') and d != '__pycache__')
        found += [os.path.relpath(os.path.join(folder, f), root) for f in sorted(files) if f.endswith('.py')]
    return found


LAB, LAB_USERS = 'experiments', {'scripts', 'tests'}
IMPORT_BY_NAME = re.compile(r'[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*')


class AboveTheTop(Exception):
    """A relative import that climbs above the project's top folder."""


def imported_modules(path: str, relpath: str) -> set:
    """Dotted names of every module `path` imports (see the module docstring), relative imports
    resolved from the project's top folder."""
    tree = ast.parse(open(path, encoding='utf-8').read(), filename=relpath)
    package = relpath[:-3].split(os.sep)[:-1]  # the folders holding the module
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level:
            if node.level - 1 > len(package):
                raise AboveTheTop(f'{relpath}: relative import above the top folder (level {node.level})')
            base = package[:len(package) - node.level + 1]
            if node.module:
                names.add('.'.join(base + [node.module]))
            else:
                names |= {'.'.join(base + [alias.name]) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) \
                and getattr(node.func, 'attr', getattr(node.func, 'id', None)) in ('import_module', '__import__'):
            names.add(node.args[0].value)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and IMPORT_BY_NAME.fullmatch(node.value):
            names.add(node.value.split(':')[0])
    return names


def imported_packages(path: str, relpath: str) -> set:
    """Top-level names of every module `path` imports."""
    return {name.split('.')[0] for name in imported_modules(path, relpath)}


def owner_of(relpath: str) -> str:
    parts = relpath.split(os.sep)
    return parts[0] if len(parts) > 1 else _package(parts[0])


def entry_modules(files: list, table: dict) -> dict:
    """Top-level module name -> the `everything` row it belongs to: the row's package, and each
    Python file directly in a row's folder by its own name (importable once the folder is on
    sys.path)."""
    top = {name for name, targets in table.items() if targets == EVERYTHING}
    entries = {name: name for name in top}
    for relpath in files:
        parts = relpath.split(os.sep)
        if len(parts) == 2 and parts[0] in top and parts[1] != '__init__.py':
            entries.setdefault(parts[1][:-3], parts[0])
    return entries


def check_layers(root: str, table: dict) -> list:
    """Every violation, as one line each."""
    files = python_files(root)
    project = {owner_of(f) for f in files} | set(table)
    problems = [f'{name}: has Python files but no row in the table' for name in sorted(project - set(table))]
    problems += [f'{name}: row of a package that does not exist' for name in sorted(set(table) - {owner_of(f) for f in files})]
    entries = entry_modules(files, table)
    for relpath in files:
        owner = owner_of(relpath)
        try:
            imported = imported_packages(os.path.join(root, relpath), relpath)
        except AboveTheTop as exc:
            problems.append(str(exc))
            continue
        if LAB in imported and owner not in LAB_USERS | {LAB}:
            problems.append(f'{relpath} imports {LAB}, which only {" and ".join(sorted(LAB_USERS))} may import')
        allowed = table.get(owner, set())
        if allowed == EVERYTHING:
            continue
        for name in sorted(imported & set(entries) - project):
            problems.append(f'{relpath} imports {name} of {entries[name]}/, an entry module')
        for name in sorted(imported & project - {owner}):
            if name not in allowed:
                problems.append(f'{relpath} imports {name}, which the row of {owner} does not allow')
    return problems


def import_cycle(table: dict):
    """A cycle among the rows' allowed imports (EVERYTHING rows are the top: nothing imports
    them), or None."""
    graph = {name: set() if targets == EVERYTHING else set(targets) for name, targets in table.items()}
    state = {}

    def visit(name, path):
        state[name] = 'open'
        for target in sorted(graph.get(name, ())):
            if state.get(target) == 'open':
                return path + [target]
            if target not in state:
                cycle = visit(target, path + [target])
                if cycle:
                    return cycle
        state[name] = 'done'
        return None

    for name in sorted(graph):
        if name not in state:
            cycle = visit(name, [name])
            if cycle:
                return cycle
    return None


def test_every_import_follows_the_layer_table():
    table = layer_table(open(os.path.join(ROOT, 'docs', 'ARCHITECTURE.md'), encoding='utf-8').read())
    assert check_layers(ROOT, table) == []
    assert import_cycle(table) is None


MADE_UP_TABLE = (f'{TABLE_HEADING}\n\n| package | may import | role |\n|---|---|---|\n'
                 '| `low/` | nothing | bottom |\n| `mid/` | `low` | middle |\n'
                 '| `experiments/` | `mid`, `low` | the lab |\n'
                 '| `top/`, `run.py`, `scripts/`, `tests/` | everything | entry |\n')


def _made_up_project(root, sources: dict) -> None:
    """Files of a small made-up project: relative path -> source; folders made as needed."""
    for relpath, source in sources.items():
        path = root.joinpath(*relpath.split('/'))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)


def test_the_checker_finds_a_layer_violation(tmp_path):
    """The same check on a small made-up project: a bottom package importing a higher one lazily,
    inside a function, a folder without a row; relative imports within a package pass."""
    table = layer_table(MADE_UP_TABLE)
    assert table == {'low': set(), 'mid': {'low'}, 'experiments': {'mid', 'low'}, 'top': EVERYTHING,
                     'run': EVERYTHING, 'scripts': EVERYTHING, 'tests': EVERYTHING}
    _made_up_project(tmp_path, {
        'low/__init__.py': 'def f():\n    import mid.x\n', 'mid/__init__.py': 'from . import y\nimport low\n',
        'mid/y.py': 'from .sub import z\n', 'mid/sub/z.py': 'from .. import y\nfrom ...low import w\n',
        'experiments/__init__.py': 'import mid\n', 'top/__init__.py': 'import low, mid\n',
        'extra/__init__.py': 'import os\n', 'run.py': 'import top\n',
        'scripts/evidence.py': 'import experiments\n', 'tests/test_low.py': 'import low, experiments\n'})
    assert check_layers(str(tmp_path), table) == [
        'extra: has Python files but no row in the table',
        f'{os.path.join("low", "__init__.py")} imports mid, which the row of low does not allow']
    assert import_cycle({'a': {'b'}, 'b': {'a'}}) == ['a', 'b', 'a']


def test_a_relative_import_that_crosses_a_layer_is_reported(tmp_path):
    """`from ..mid import x` in low/a.py climbs to the top folder and into mid: the bottom layer
    importing the middle one; one more level climbs above the project."""
    _made_up_project(tmp_path, {'low/__init__.py': '', 'low/a.py': 'from ..mid import x\n',
                                'low/b.py': 'from .. import mid\n', 'low/c.py': 'from ... import anything\n',
                                'mid/__init__.py': '', 'mid/x.py': 'from ..low import b\n'})
    assert check_layers(str(tmp_path), layer_table(MADE_UP_TABLE)) == [
        'experiments: row of a package that does not exist', 'run: row of a package that does not exist',
        'scripts: row of a package that does not exist', 'tests: row of a package that does not exist',
        'top: row of a package that does not exist',
        f'{os.path.join("low", "a.py")} imports mid, which the row of low does not allow',
        f'{os.path.join("low", "b.py")} imports mid, which the row of low does not allow',
        f'{os.path.join("low", "c.py")}: relative import above the top folder (level 3)']


def test_no_library_module_imports_an_entry_module(tmp_path):
    """Neither a top-level script nor a script of scripts/ by its own name (sys.path put there), nor
    a test module; by statement, inside a function, through importlib or as a 'module:attribute'
    name. The entry rows themselves may."""
    _made_up_project(tmp_path, {
        'low/__init__.py': 'def f():\n    import importlib\n    return importlib.import_module("run")\n',
        'low/a.py': 'import sys\nsys.path.insert(0, "scripts")\nimport evidence\n',
        'mid/__init__.py': 'HOOKS = {"go": "tool:main"}\n', 'mid/b.py': 'def g():\n    from conftest import ROOT\n',
        'experiments/__init__.py': 'def h():\n    return __import__("scripts.tool")\n',
        'run.py': 'import evidence, tool\n', 'scripts/evidence.py': 'import tool\n', 'scripts/tool.py': '',
        'tests/conftest.py': 'import evidence\n', 'top/__init__.py': 'import run\n'})
    assert check_layers(str(tmp_path), layer_table(MADE_UP_TABLE)) == [
        f'{os.path.join("experiments", "__init__.py")} imports scripts, which the row of experiments does not allow',
        f'{os.path.join("low", "__init__.py")} imports run, which the row of low does not allow',
        f'{os.path.join("low", "a.py")} imports evidence of scripts/, an entry module',
        f'{os.path.join("mid", "__init__.py")} imports tool of scripts/, an entry module',
        f'{os.path.join("mid", "b.py")} imports conftest of tests/, an entry module']


def test_nothing_but_scripts_and_tests_imports_the_lab(tmp_path):
    """Not the library, and not the entry scripts either, though their row allows everything else."""
    _made_up_project(tmp_path, {
        'low/__init__.py': '', 'mid/__init__.py': 'def f():\n    from experiments import study\n',
        'experiments/__init__.py': 'import mid\n', 'experiments/study.py': 'from . import runner\n',
        'experiments/runner.py': '', 'run.py': 'import experiments.study\n',
        'top/__init__.py': 'RUNNER = "experiments.runner:main"\n',
        'scripts/evidence.py': 'from experiments.study import load\n', 'tests/test_lab.py': 'import experiments\n'})
    assert check_layers(str(tmp_path), layer_table(MADE_UP_TABLE)) == [
        'run.py imports experiments, which only scripts and tests may import',
        f'{os.path.join("mid", "__init__.py")} imports experiments, which only scripts and tests may import',
        f'{os.path.join("mid", "__init__.py")} imports experiments, which the row of mid does not allow',
        f'{os.path.join("top", "__init__.py")} imports experiments, which only scripts and tests may import']


@pytest.mark.skipif(shutil.which('git') is None, reason='needs git')
def test_in_a_git_checkout_the_project_is_what_git_would_hold(tmp_path):
    """A scratch script in a git-ignored folder (local/, save/) is nobody's package; an untracked
    file that is not ignored is the project's, as a commit would take it."""
    subprocess.run(['git', 'init', '-q', str(tmp_path)], check=True)
    (tmp_path / '.gitignore').write_text('scratch/\n')
    for folder in ('scratch', 'low'):
        (tmp_path / folder).mkdir()
    (tmp_path / 'scratch' / 'notes.py').write_text('import low\n')
    (tmp_path / 'low' / '__init__.py').write_text('')
    (tmp_path / 'run.py').write_text('import low\n')
    subprocess.run(['git', '-C', str(tmp_path), 'add', 'run.py'], check=True)
    assert python_files(str(tmp_path)) == [os.path.join('low', '__init__.py'), 'run.py']


def test_a_per_file_row_is_refused():
    text = f'{TABLE_HEADING}\n\n| package | may import | role |\n|---|---|---|\n| `helper/cka.py` | nothing | math |\n'
    with pytest.raises(AssertionError, match='whole packages'):
        layer_table(text)
