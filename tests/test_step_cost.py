"""experiments/step_cost.py and `scripts/evidence.py cost`: each row's real training step (the
method's own loss and batch extras), timed interleaved with the reference row's, and the ratio the
summary shows."""
import copy
import json
import statistics

import pytest
import torch
import torch.nn.functional as F

from experiments import cli
from experiments.step_cost import build_step, build_teacher, interleaved, row_step_costs
from experiments.study import load_study
from experiments.summary import summarise
from runtime.errors import ConfigError

from conftest import CRD_ROW, tiny_study_text


@pytest.fixture
def study(tmp_path):
    path = tmp_path / 'tiny.toml'
    path.write_text(tiny_study_text(seeds='[0]', rows=CRD_ROW))
    return load_study(str(path))


class ClassSet(torch.utils.data.Dataset):
    """Random images, six per class of 10, with the `targets` list CRD's contrastive wrapper reads."""

    def __init__(self):
        generator = torch.Generator().manual_seed(3)
        self.images = torch.randn(60, 3, 32, 32, generator=generator)
        self.targets = [i % 10 for i in range(60)]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.images[i], self.targets[i]


def test_a_kd_step_takes_ce_plus_kd_on_its_batch_and_steps_sgd():
    train_set, index = ClassSet(), torch.tensor([5, 0, 17, 33, 42, 8, 51, 26])
    teacher = build_teacher('resnet8', 10, train_set.images[:8])
    step = build_step(['--distill', 'kd', '-c', '1', '-d', '1', '-b', '0', '--batch_size', '8',
                       '--learning_rate', '0.05', '--weight_decay', '0', '--momentum', '0'],
                      teacher, 'resnet8', 'resnet8', train_set=train_set, index=index, num_classes=10,
                      device=torch.device('cpu'))
    student = step.student
    images = train_set.images[index]
    targets = torch.tensor([train_set.targets[i] for i in index.tolist()])
    torch.testing.assert_close(step.batch.images, images)
    assert step.batch.targets.tolist() == targets.tolist() and len(step.batch.extra) == 0
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    # the loss by hand, in float64 on copies: CE + KL(teacher || student) at T = 4, times 16
    student64, teacher64 = copy.deepcopy(student).double().train(), copy.deepcopy(teacher).double().eval()
    logits, teacher_logits = student64(images.double()), teacher64(images.double())
    expected = F.cross_entropy(logits, targets) + 16 * F.kl_div(
        F.log_softmax(logits / 4, 1), F.softmax(teacher_logits / 4, 1), reduction='batchmean')
    expected.backward()
    step()
    for name, p in student.named_parameters():  # plain SGD, lr 0.05: p <- p - 0.05 * grad
        grad = dict(student64.named_parameters())[name].grad
        torch.testing.assert_close(p.detach().double(), before[name].double() - 0.05 * grad, atol=2e-5, rtol=1e-4)


def test_a_crd_step_carries_contrast_indices_from_other_classes():
    train_set, index = ClassSet(), torch.tensor([5, 0, 17, 33, 42, 8, 51, 26])
    teacher = build_teacher('resnet8', 10, train_set.images[:8])
    step = build_step(['--distill', 'crd', '-b', '0.8', '--nce_k', '16', '--batch_size', '8'],
                      teacher, 'resnet8', 'resnet8', train_set=train_set, index=index, num_classes=10,
                      device=torch.device('cpu'))
    batch_index, contrast = step.batch.extra
    assert batch_index.tolist() == index.tolist() and contrast.shape == (8, 17)
    for i, row in zip(index.tolist(), contrast.tolist()):
        assert train_set.targets[row[0]] == train_set.targets[i]  # the positive: its own class
        assert all(train_set.targets[j] != train_set.targets[i] for j in row[1:])
    step()  # the memory bank takes the batch's indices


def test_interleaved_takes_every_step_in_turn_first_and_second_alike():
    calls = []
    times = interleaved({'a': lambda: calls.append('a'), 'b': lambda: calls.append('b')}, repeats=4, warmup=2)
    assert calls == ['a', 'a', 'b', 'b'] + ['a', 'b', 'b', 'a'] * 2
    assert {k: len(v) for k, v in times.items()} == {'a': 4, 'b': 4}


def test_row_costs_are_ratios_of_medians_against_the_reference(study, tmp_path):
    lines = []
    costs = row_step_costs(study, device=torch.device('cpu'), repeats=2, warmup=1, runs=3, log=lines.append)
    assert list(costs['rows']) == ['ckagroup', 'crd'] and costs['reference'] == 'kd'
    assert costs['train_images'] == 10 * 4 and costs['batch_size'] == 8 and 'threads' in costs['machine']
    for row, r in costs['rows'].items():
        assert len(r['runs']) == 3
        for run in r['runs']:
            assert run['ratio'] == pytest.approx(run['row_ms'] / run['reference_ms'])
        assert r['ratio'] == statistics.median(run['ratio'] for run in r['runs'])
    assert len(lines) == 6
    # the summary shows them beside the rows, the reference at 1
    (tmp_path / 'cost.json').write_text(json.dumps(costs))
    record = {'seed': 0, 'curve': [50.0], 'epoch_seconds': 1.0, 'teacher_groups': None, 'teacher_split': 'cka',
              'monitor_matrix': None, 'argv': []}
    records = [dict(record, row=row, test_top1_full=top1) for row, top1 in (('kd', 50.0), ('crd', 51.0))]
    teacher = {'model': 'resnet8', 'epochs': 1, 'train_images': 60, 'test_top1_full': 40.0,
               'plateau_gain': None, 'seconds': 1.0}
    summary = summarise(study, teacher, records, str(tmp_path))
    assert summary['rows']['kd']['step_cost'] == 1.0
    assert summary['rows']['crd']['step_cost'] == costs['rows']['crd']['ratio']
    table = (tmp_path / 'summary.md').read_text()
    crd = [run['ratio'] for run in costs['rows']['crd']['runs']]  # the median with the lowest and highest run
    assert summary['rows']['crd']['step_cost_runs'] == crd
    assert '| step / kd |' in table and f'| {statistics.median(crd):.2f} ({min(crd):.2f}-{max(crd):.2f}) |' in table
    assert 'which goes first alternating each turn' in table


def test_the_cost_command_refuses_an_unknown_row_in_one_line(study, capsys):
    assert cli.main(['cost', study.source, '--rows', 'fitnet', '--results', '/nonexistent']) == 2
    assert "no row 'fitnet'" in capsys.readouterr().err


def test_rows_timed_later_join_an_earlier_pass_on_the_same_machine_only(study):
    settings = {'reference': 'kd', 'order': 'alternating', 'machine': 'cpu X, 2 threads', 'device': 'cpu',
                'batch_size': 8, 'train_images': 60, 'repeats': 15, 'warmup': 2}
    earlier = dict(settings, rows={'ckagroup': {'ratio': 1.3}, 'crd': {'ratio': 2.4}, 'gone': {'ratio': 9.0}})
    merged = cli.merged_costs(earlier, dict(settings, rows={'crd': {'ratio': 2.5}}), study, 'cost.json')
    assert merged['rows'] == {'ckagroup': {'ratio': 1.3}, 'crd': {'ratio': 2.5}}  # 'gone' is no row of the study
    other = dict(settings, machine='cpu Y, 2 threads', rows={'crd': {'ratio': 2.5}})
    with pytest.raises(ConfigError, match=r"cost\.json was timed with another machine \('cpu X, 2 threads'"):
        cli.merged_costs(earlier, other, study, 'cost.json')
    before_alternating = {k: v for k, v in earlier.items() if k != 'order'}  # the reference first in every turn
    with pytest.raises(ConfigError, match=r"cost\.json was timed with another order \(None, now 'alternating'\)"):
        cli.merged_costs(before_alternating, dict(settings, rows={}), study, 'cost.json')


@pytest.mark.parametrize('flags, message', [
    (['--device', 'gpu7'], "--device 'gpu7': give cpu, cuda or cuda:N"),
    (['--repeats', '0'], '--repeats 0 --runs 3: give at least 1 of each'),
])
def test_the_cost_command_refuses_bad_settings_in_one_line(study, capsys, flags, message):
    assert cli.main(['cost', study.source, '--results', '/nonexistent'] + flags) == 2
    assert capsys.readouterr().err.strip() == f'error: {message}'
