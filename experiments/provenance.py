"""What a raw record says about where it came from: the fingerprint of its arguments, the digest of
a checkpoint, the version of the CKA code, the machine and the learning rates it trained with."""
import hashlib
import importlib
import json
import os
import platform
from typing import List, Sequence

import torch

from helper.run_folder import OPTIONS_FILE
from helper.setup import select_device


def fingerprint(argv: Sequence[str]) -> str:
    """The key of a run: its exact arguments (a student's start with its teacher's digest)."""
    return hashlib.sha256(json.dumps(list(argv)).encode()).hexdigest()[:16]


def file_digest(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            sha.update(chunk)
    return sha.hexdigest()[:16]


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def module_files(name: str) -> List[str]:
    """The Python files of an importable module: its file, or every .py under a package's folder."""
    module = importlib.import_module(name)
    if not hasattr(module, '__path__'):
        return [os.path.abspath(module.__file__)]
    files = []
    for folder in module.__path__:
        for parent, folders, names in os.walk(folder):
            folders[:] = [f for f in folders if f != '__pycache__']
            files += [os.path.abspath(os.path.join(parent, n)) for n in names if n.endswith('.py')]
    return files


def code_hash(module_names: Sequence[str]) -> str:
    """sha256 over the modules' Python files (`module_files`), each as its path relative to the folder
    that holds the first module's top-level package, a zero byte, then its bytes, in path order."""
    top = importlib.import_module(module_names[0].split('.')[0])
    root = os.path.dirname(os.path.abspath(top.__path__[0] if hasattr(top, '__path__') else top.__file__))
    paths = sorted('/'.join(os.path.relpath(f, root).split(os.sep)) for name in module_names for f in module_files(name))
    sha = hashlib.sha256()
    for path in paths:
        sha.update(path.encode() + b'\0')
        with open(os.path.join(root, path), 'rb') as f:
            sha.update(f.read())
    return sha.hexdigest()


# The code of the CKA term and monitor, module or package alike: runs of one study that use it
# should share one version of it, which each raw record names. Hashed when this process starts
# the lab, right after importing that code: the files this process runs, whatever is edited later.
CKA_CODE_MODULES = ('cka', 'distiller_zoo.ckagroup')
CKA_CODE_HASH = code_hash(CKA_CODE_MODULES)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or 'unknown'


def run_environment(run_dir: str) -> dict:
    """What a finished run trained with, from its options.json and this process: the learning rate
    asked for and the one that trained (the MobileNet/ShuffleNet rule replaces it with 0.01); the
    device its --device resolved to (the GPU's name, else 'cpu'), the CPU threads it had (runs train
    in this process), the CPU model and its capability in torch: the rates, and in bf16 the
    rounding, depend on them."""
    options = read_json(os.path.join(run_dir, OPTIONS_FILE))
    device = select_device(options['device'])
    return {'learning_rate_requested': options['requested_learning_rate'],
            'learning_rate_effective': options['learning_rate'],
            'device': f'cuda ({torch.cuda.get_device_name(device)})' if device.type == 'cuda' else 'cpu',
            'cpu_threads': torch.get_num_threads(), 'cpu_model': cpu_model(),
            'torch_cpu_capability': torch.backends.cpu.get_cpu_capability()}
