"""Both parsers, the post-parse rules and the result files against the SimKD repo's scripts.

The expectation is tests/fixtures/family_flags.json, written by hand from that repo's
train_student.py / train_teacher.py (each value with where it comes from), never from our code.
Every difference kept on purpose is listed there and in README.md's Flags section.
"""
import argparse
import json
import math
import os
import re

import pytest

import models
from helper import distributed
from runtime.errors import ConfigError
from helper.options import parse_student_options, parse_teacher_options, student_parser, teacher_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILY = json.load(open(os.path.join(ROOT, 'tests', 'fixtures', 'family_flags.json')))
PARSERS = {'train_student.py': student_parser, 'train_teacher.py': teacher_parser}
PARSE = {'train_student.py': parse_student_options, 'train_teacher.py': parse_teacher_options}
FIELDS = ('flags', 'type', 'default', 'choices', 'action')
INTENTIONAL = {(script, d['flag'], d['field']): d for d in FAMILY['intentional_differences']
               for script in d['scripts']}
FAMILY_FLAGS = [(script, entry) for script, spec in FAMILY['scripts'].items() for entry in spec['flags']]


def _action(parser, flag):
    for action in parser._actions:
        if flag in action.option_strings:
            return action
    return None


def _ours(action) -> dict:
    return {'flags': sorted(action.option_strings),
            'type': action.type.__name__ if action.type is not None else None,
            'default': action.default,
            'choices': list(action.choices) if action.choices is not None else None,
            'action': 'store_true' if isinstance(action, argparse._StoreTrueAction) else 'store'}


def _family(entry) -> dict:
    return {'flags': sorted(entry['flags']), 'type': entry.get('type'), 'default': entry['default'],
            'choices': entry.get('choices'), 'action': entry.get('action', 'store')}


def _readme_flags_section() -> str:
    text = open(os.path.join(ROOT, 'README.md')).read()
    start = text.index('\n## Flags')
    end = text.index('\n## ', start + 1)
    return text[start:end]


@pytest.mark.parametrize('script, entry', FAMILY_FLAGS, ids=[f'{s}:{e["flags"][-1]}' for s, e in FAMILY_FLAGS])
def test_flag_matches_the_family(script, entry):
    long_flag = entry['flags'][-1]
    action = _action(PARSERS[script](), long_flag)
    assert action is not None, f'{script} lacks {long_flag}'
    ours, family = _ours(action), _family(entry)
    for field in FIELDS:
        if ours[field] == family[field]:
            continue
        allowed = INTENTIONAL.get((script, long_flag, field))
        assert allowed is not None, f'{script} {long_flag} {field}: ours {ours[field]!r}, family {family[field]!r}'
        if allowed['ours'] == 'superset':
            assert set(family[field]) <= set(ours[field]), (long_flag, field)
        else:
            assert ours[field] == allowed['ours'], (long_flag, field)


def test_every_listed_difference_is_real_and_in_the_readme():
    section = _readme_flags_section()
    comparable = {(s, e['flags'][-1]): _family(e) for s, e in FAMILY_FLAGS}
    for (script, flag, field), difference in INTENTIONAL.items():
        assert re.search(rf'^\| `{re.escape(flag)}`', section, re.M), f'README Flags lacks the {flag} row'
        if field in FIELDS:  # a stale entry (no longer different) must be removed
            ours = _ours(_action(PARSERS[script](), flag))[field]
            assert ours != comparable[(script, flag)][field], (script, flag, field)


def test_every_flag_of_ours_is_either_the_familys_or_in_the_readme():
    section = _readme_flags_section()
    for script, make in PARSERS.items():
        family = {f for e in FAMILY['scripts'][script]['flags'] for f in e['flags']}
        for action in make()._actions:
            for flag in action.option_strings:
                if flag in family or flag in ('-h', '--help'):
                    continue
                assert re.search(rf'`{re.escape(flag)}[`\s\[]', section), f'{script} {flag} is not in README Flags'


@pytest.mark.parametrize('script', sorted(FAMILY['scripts']))
def test_low_lr_rule_of_the_family(script, capsys):
    rule = FAMILY['scripts'][script]['low_lr_rule']
    for model in rule['models']:
        assert model in models.model_dict
        opt = PARSE[script]([rule['flag'], model, '--learning_rate', '0.05'])
        assert opt.learning_rate == rule['learning_rate'], (script, model)
    assert str(rule['learning_rate']) in capsys.readouterr().out  # said, not silent
    assert PARSE[script]([rule['flag'], 'resnet8', '--learning_rate', '0.05']).learning_rate == 0.05


# --------------------------------------------------------------------------- seeds
@pytest.mark.parametrize('trial, seed', [('0', 0), ('1', 1), ('17', 17), ('4294967295', 4294967295)])
def test_a_numeric_trial_is_its_seed(trial, seed):
    assert parse_student_options(['--trial', trial]).seed == seed
    assert parse_teacher_options(['-t', trial]).seed == seed


@pytest.mark.parametrize('trial', ['a', 'kd-seed0', '4294967296', '-1', 'zwölf'])
def test_any_other_trial_seeds_from_its_crc32(trial):
    import zlib
    assert parse_student_options(['--trial', trial]).seed == zlib.crc32(trial.encode('utf-8'))


def test_default_trials_and_seed_override():
    assert parse_teacher_options([]).seed == 0 and parse_student_options([]).seed == 1
    assert parse_student_options(['--trial', '3', '--seed', '9']).seed == 9
    for bad in ('-1', str(2**32)):
        with pytest.raises(ConfigError, match='--seed'):
            parse_student_options(['--seed', bad])


# --------------------------------------------------------------------------- distributed split
@pytest.mark.parametrize('batch, workers, nproc', [(64, 8, 4), (256, 8, 4), (64, 8, 2), (96, 7, 3),
                                                   (64, 0, 2), (64, 1, 4), (64, 8, 1)])
def test_per_process_share_follows_the_family(batch, workers, nproc, capsys):
    rule = FAMILY['distributed_split']
    rounding = {'floor': math.floor, 'ceil': math.ceil}
    opt = argparse.Namespace(batch_size=batch, num_workers=workers)
    distributed.share_per_process(opt, nproc, announce=True)
    assert opt.batch_size == rounding[rule['batch_size']](batch / nproc)
    assert opt.num_workers == rounding[rule['num_workers']](workers / nproc)
    assert (opt.batch_size_per_node, opt.num_workers_per_node) == (batch, workers)
    out = capsys.readouterr().out
    assert out.count('\n') == 1 and f'--batch_size {opt.batch_size},' in out


def test_a_batch_that_does_not_divide_is_an_error():
    opt = argparse.Namespace(batch_size=50, num_workers=8)
    with pytest.raises(ConfigError, match='--batch_size 50 does not divide over the 4 processes') as info:
        distributed.share_per_process(opt, 4, announce=False)
    assert '\n' not in str(info.value) and opt.batch_size == 50
