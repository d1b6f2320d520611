"""The import layers of docs/ARCHITECTURE.md hold: every module's imports (read with ast, lazy
imports inside functions included) name only the project packages its package's row allows.

The table has one row per package (a top-level folder, or a top-level script) and no per-file
exceptions; every package with Python files has a row, and the rows allow no import cycle."""
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


def imported_packages(path: str, relpath: str) -> set:
    """Top-level names of every module `path` imports, relative imports resolved."""
    tree = ast.parse(open(path, encoding='utf-8').read(), filename=relpath)
    own = relpath[:-3].split(os.sep)
    if own[-1] == '__init__':
        own = own[:-1] + ['__init__']
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split('.')[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = own[:-node.level]
                assert base, f'{relpath}: relative import above the top level'
                names.add(base[0])
            else:
                names.add(node.module.split('.')[0])
    return names


def owner_of(relpath: str) -> str:
    parts = relpath.split(os.sep)
    return parts[0] if len(parts) > 1 else _package(parts[0])


def check_layers(root: str, table: dict) -> list:
    """Every violation, as one line each."""
    files = python_files(root)
    project = {owner_of(f) for f in files} | set(table)
    problems = [f'{name}: has Python files but no row in the table' for name in sorted(project - set(table))]
    problems += [f'{name}: row of a package that does not exist' for name in sorted(set(table) - {owner_of(f) for f in files})]
    for relpath in files:
        owner = owner_of(relpath)
        allowed = table.get(owner, set())
        if allowed == EVERYTHING:
            continue
        for name in sorted(imported_packages(os.path.join(root, relpath), relpath) & project - {owner}):
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


def test_the_checker_finds_a_layer_violation(tmp_path):
    """The same check on a small made-up project: a bottom package importing the top one, a
    relative import, a lazy import inside a function, a folder without a row."""
    table = layer_table(f'{TABLE_HEADING}\n\n| package | may import | role |\n|---|---|---|\n'
                        '| `low/` | nothing | bottom |\n| `mid/` | `low` | middle |\n'
                        '| `top/`, `run.py` | everything | entry |\n')
    assert table == {'low': set(), 'mid': {'low'}, 'top': EVERYTHING, 'run': EVERYTHING}
    for folder, source in (('low', 'def f():\n    import mid.x\n'), ('mid', 'from . import y\nimport low\n'),
                           ('top', 'import low, mid\n'), ('extra', 'import os\n')):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / '__init__.py').write_text(source)
    (tmp_path / 'run.py').write_text('import top\n')
    assert check_layers(str(tmp_path), table) == [
        'extra: has Python files but no row in the table',
        f'{os.path.join("low", "__init__.py")} imports mid, which the row of low does not allow']
    assert import_cycle({'a': {'b'}, 'b': {'a'}}) == ['a', 'b', 'a']


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
