"""The README's result tables are transcriptions of the committed summaries: every number in them is
read back here from docs/results/<study>/summary.json (and the step costs from cost.json), so that
a regenerated summary or a mistyped cell fails instead of leaving a plausible wrong number."""
import json
import os


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, 'README.md'), encoding='utf-8').read()
# the README's names of the comparisons (its 'pair, student epochs' cells) -> the studies
PAIRS = {'resnet56 -> resnet8, 30': 'resnet56_resnet8', 'resnet32 -> MobileNetV2, 30': 'resnet32_mobilenetv2',
         'resnet56 -> resnet8, 60': 'resnet56_resnet8_long',
         'resnet56 -> resnet8, 30 (sensitivity grid)': 'resnet56_resnet8_sensitivity'}


def summary(study: str) -> dict:
    with open(os.path.join(ROOT, 'docs', 'results', study, 'summary.json')) as f:
        return json.load(f)


def table_after(question: str) -> list:
    """The rows (lists of cells) of the first markdown table after the paragraph starting with the
    bold `question`, its header row first."""
    start = README.index(f'**{question}**')
    lines = README[start:].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith('|'))
    rows = []
    for line in lines[first:]:
        if not line.startswith('|'):
            break
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if not set(''.join(cells)) <= set('-'):
            rows.append(cells)
    return rows


def p_text(p: float) -> str:
    """How the README writes a p-value: three decimals, scientific below 0.001."""
    return f'{p:.3f}' if p >= 0.001 else f'{p:.1e}'


def interval(d: dict) -> str:
    return f'{d["mean"]:+.2f} [{d["low"]:+.2f}, {d["high"]:+.2f}]'


def seeds_text(seeds: list) -> str:
    return f'{seeds[0]}-{seeds[-1]}' if seeds == list(range(seeds[0], seeds[-1] + 1)) else ', '.join(map(str, seeds))


def test_the_readme_names_every_comparison_it_transcribes():
    assert set(PAIRS.values()) <= set(os.listdir(os.path.join(ROOT, 'docs', 'results')))


def test_cka_term_against_kd_table():
    header, *rows = table_after('Does the CKA term beat KD?')
    assert header == ['pair, student epochs', 'seeds', 'ckagroup - KD', 'p', 'Holm p', 'seeds ahead', 'verdict']
    assert len(rows) == 4
    for pair, seeds, difference, p, holm, ahead, verdict in rows:
        s = summary(PAIRS[pair])
        row = s['rows'][s['cka_row']]
        d = row['vs'][s['reference']]
        assert (seeds, difference, p, holm) == (seeds_text(row['seeds']), interval(d), p_text(d['p']),
                                               p_text(d['holm_p'])), pair
        assert (ahead, verdict) == (f'{d["ahead"]}/{d["n"]}', row['verdict']), pair


def test_grouping_table():
    header, *rows = table_after('Do CKA groups beat other groupings?')
    columns = {'even - CKA groups': 'even_groups', 'random - CKA groups': 'random_groups',
               'one group - CKA groups': 'one_group'}
    assert header == ['pair, student epochs, seeds', *columns]
    assert len(rows) == 3
    for pair_seeds, *cells in rows:
        pair, seeds = pair_seeds.rsplit(', ', 1)
        s = summary(PAIRS[pair])
        assert seeds == seeds_text(s['rows'][s['cka_row']]['seeds'])
        for cell, row in zip(cells, columns.values()):
            expected = interval(s['rows'][row]['vs'][s['cka_row']]) if row in s['rows'] else '–'
            assert cell == expected, (pair, row)


def test_weight_and_groups_grid_table():
    header, *rows = table_after('Weight and number of groups?')
    assert header == ['row', 'top-1, 3 seeds', 'vs beta 5, n 4']
    s = summary('resnet56_resnet8_sensitivity')
    names = {'KD': 'kd', 'beta 5, n 4': 'ckagroup', 'beta 1': 'beta_1', 'beta 20': 'beta_20', 'n 2': 'n_2',
             'n 3': 'n_3'}
    assert [r[0] for r in rows] == list(names)
    for label, top1, against in rows:
        row = s['rows'][names[label]]
        assert len(row['seeds']) == 3 and top1 == f'{row["top1"]["mean"]:.2f} ± {row["top1"]["std"]:.2f}', label
        d = row['vs'].get('ckagroup')
        assert against == '–' if d is None else against.startswith(interval(d)), label
    beta_20 = s['rows']['beta_20']['vs']['ckagroup']
    assert f'(p = {p_text(beta_20["p"])}, ' in rows[3][2]


def test_grid_holm_over_its_five_comparisons_with_beta_5():
    # the README adjusts beta 20's p over the grid's five comparisons with beta 5 (by hand: Holm)
    s = summary('resnet56_resnet8_sensitivity')
    ps = sorted(r['vs']['ckagroup']['p'] for name, r in s['rows'].items() if name != 'ckagroup')
    assert len(ps) == 5
    beta_20 = s['rows']['beta_20']['vs']['ckagroup']['p']
    adjusted, running = {}, 0.0
    for rank, p in enumerate(ps):
        running = max(running, min(1.0, (5 - rank) * p))
        adjusted[p] = running
    assert f'Holm {adjusted[beta_20]:.3f} over the grid\'s five comparisons with beta 5' in README


def test_flow_table():
    header, *rows = table_after('Does the monitored flow similarity predict accuracy across rows?')
    assert header[:3] == ['comparison', 'rows', 'Pearson r, flow CKA vs top-1']
    studies = {'resnet56 -> resnet8, 30 epochs': 'resnet56_resnet8',
               'resnet32 -> MobileNetV2, 30 epochs': 'resnet32_mobilenetv2',
               'resnet56 -> resnet8, 60 epochs': 'resnet56_resnet8_long', 'sensitivity grid': 'resnet56_resnet8_sensitivity'}
    assert [r[0] for r in rows] == list(studies)
    for name, count, r, _ in rows:
        s = summary(studies[name])
        assert count == str(len(s['rows'])) and r.startswith(f'{s["flow_vs_accuracy_pearson_over_rows"]:.2f}'), name
        if 'over the four ckagroup rows' in r:  # the same r without the reference row, by hand
            others = [row for row in s['rows'].values() if row['seeds'] and row is not s['rows'][s['reference']]]
            assert len(others) == 4
            xs, ys = [o['flow_cka'] for o in others], [o['top1']['mean'] for o in others]
            mx, my = sum(xs) / 4, sum(ys) / 4
            pearson = (sum((x - mx) * (y - my) for x, y in zip(xs, ys))
                       / (sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys)) ** 0.5)
            assert r.endswith(f'over the four ckagroup rows {pearson:.2f})'), name


def test_step_cost_table():
    header, *rows = table_after('What does each method\'s training step cost against KD?')
    s = summary('resnet56_resnet8_family')
    with open(os.path.join(ROOT, 'docs', 'results', 'resnet56_resnet8_family', 'cost.json')) as f:
        cost = json.load(f)
    ratios = {row: timed['ratio'] for row, timed in cost['rows'].items()}
    assert len(rows) == 1 and rows[0][0] == 'CPU, AVX2' and 'AVX2' in cost['machine']
    for column, cell in zip(header[1:], rows[0][1:]):
        if column.startswith('ckagroup'):
            expected = ' / '.join(f'{ratios[r]:.2f}' for r in ('ckagroup_b5', 'ckagroup_b20', 'ckagroup_b20_even'))
        else:
            expected = f'{ratios[next(r for r in ratios if r.startswith(column.split()[0]))]:.2f}'
        assert cell == expected, column
    # every row of the family comparison is in the table, at the ratio its summary shows
    assert set(ratios) == set(s['rows']) - {'kd'} and all(s['rows'][r]['step_cost'] == ratios[r] for r in ratios)
    assert len(header) - 1 + 2 == len(ratios)  # ckagroup's three rows share one column
