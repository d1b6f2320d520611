"""The README's result tables are transcriptions of the committed summaries: every number in them is
read back here from docs/results/<study>/summary.json (and the step costs from cost.json), so that
a regenerated summary or a mistyped cell fails instead of leaving a plausible wrong number."""
import json
import os

import pytest

from experiments.summary import load_runs


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, 'README.md'), encoding='utf-8').read()
# the README's names of the comparisons (its 'pair, student epochs' cells) -> the studies
PAIRS = {'resnet56 -> resnet8, 30': 'resnet56_resnet8', 'resnet32 -> MobileNetV2, 30': 'resnet32_mobilenetv2',
         'resnet56 -> resnet8, 60': 'resnet56_resnet8_long',
         'resnet56 -> resnet8, 30 (sensitivity grid)': 'resnet56_resnet8_sensitivity'}
FAMILY = 'resnet56_resnet8_family'
CROSS = 'resnet32_mobilenetv2_family'
SECOND_TEACHER = 'resnet56_resnet8_teacher_seed1'
# the family comparisons' ckagroup rows where the first questions' tables show them, by their labels there
FAMILY_ROWS = {'resnet56 -> resnet8, 30 (family comparison, beta 5)': (FAMILY, 'ckagroup_b5'),
               'resnet56 -> resnet8, 30 (family comparison, beta 20)': (FAMILY, 'ckagroup_b20'),
               'resnet32 -> MobileNetV2, 30 (family comparison, beta 20)': (CROSS, 'ckagroup_b20'),
               'resnet56 -> resnet8, 30 (second teacher, beta 20)': (SECOND_TEACHER, 'ckagroup_b20')}
# each family comparison's ranked table and head-to-head table, by the bold words that open them
RANKED_TABLES = [(FAMILY, 'Does ckagroup beat the family\'s methods?'), (CROSS, 'On resnet32 -> MobileNetV2')]
HEAD_TO_HEAD_TABLES = [(FAMILY, 'Head to head:'), (CROSS, 'Head to head on resnet32 -> MobileNetV2:')]


def summary(study: str) -> dict:
    with open(os.path.join(ROOT, 'docs', 'results', study, 'summary.json')) as f:
        return json.load(f)


def step_costs(study: str) -> dict:
    """The study's committed step-cost pass (cost.json)."""
    with open(os.path.join(ROOT, 'docs', 'results', study, 'cost.json')) as f:
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
    assert set(PAIRS.values()) | {FAMILY, CROSS, SECOND_TEACHER} <= set(os.listdir(os.path.join(ROOT, 'docs', 'results')))


def study_and_row(pair: str) -> tuple:
    """The summary a table row of the first questions transcribes, and its ckagroup row."""
    if pair in FAMILY_ROWS:
        study, row = FAMILY_ROWS[pair]
        return summary(study), row
    s = summary(PAIRS[pair])
    return s, s['cka_row']


def test_cka_term_against_kd_table():
    header, *rows = table_after('Does the CKA term beat KD?')
    assert header == ['pair, student epochs', 'seeds', 'ckagroup - KD', 'p', 'Holm p', 'seeds ahead', 'verdict']
    assert len(rows) == 8 and [r[0] for r in rows if r[0] in FAMILY_ROWS] == list(FAMILY_ROWS)
    for pair, seeds, difference, p, holm, ahead, verdict in rows:
        s, name = study_and_row(pair)
        row = s['rows'][name]
        d = row['vs'][s['reference']]
        assert (seeds, difference, p, holm) == (seeds_text(row['seeds']), interval(d), p_text(d['p']),
                                               p_text(d['holm_p'])), pair
        assert (ahead, verdict) == (f'{d["ahead"]}/{d["n"]}', row['verdict']), pair


def test_even_groups_against_kd_in_the_family_comparisons():
    even, cross, second = (summary(study)['rows']['ckagroup_b20_even'] for study in (FAMILY, CROSS, SECOND_TEACHER))
    assert even['verdict'] == cross['verdict'] == second['verdict'] == 'ahead'
    assert (f'beta 20 with even groups in the family comparison (Holm {p_text(even["vs"]["kd"]["holm_p"])}), '
            f'on resnet32 -> MobileNetV2 in its family comparison (Holm {p_text(cross["vs"]["kd"]["holm_p"])}) and '
            f'on the second teacher (Holm {p_text(second["vs"]["kd"]["holm_p"])})' in ' '.join(README.split()))


def test_grouping_table():
    header, *rows = table_after('Do CKA groups beat other groupings?')
    columns = {'even - CKA groups': 'even_groups', 'random - CKA groups': 'random_groups',
               'one group - CKA groups': 'one_group'}
    assert header == ['pair, student epochs, seeds', *columns]
    assert len(rows) == 6
    # the family comparisons' grouping rows: beta 20 with even groups against beta 20 with CKA groups
    family_columns = {'even - CKA groups': 'ckagroup_b20_even'}
    for pair_seeds, *cells in rows:
        pair, seeds = pair_seeds.rsplit(', ', 1)
        s, cka_row = study_and_row(pair)
        assert seeds == seeds_text(s['rows'][cka_row]['seeds'])
        for cell, column in zip(cells, columns):
            row = (family_columns if pair in FAMILY_ROWS else columns).get(column)
            expected = interval(s['rows'][row]['vs'][cka_row]) if row in s['rows'] else '–'
            assert cell == expected, (pair, column)


def holm_by_hand(ps: list) -> list:
    """Holm's step-down adjustment of `ps`, in their order."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    adjusted, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


def test_grouping_table_holm_over_its_comparisons():
    # the README adjusts the even-minus-CKA p of the family comparisons and the second teacher over
    # the table's ten comparisons
    tests = [(PAIRS['resnet56 -> resnet8, 30'], r) for r in ('even_groups', 'random_groups', 'one_group')]
    tests += [(PAIRS['resnet32 -> MobileNetV2, 30'], r) for r in ('even_groups', 'random_groups', 'one_group')]
    tests += [(PAIRS['resnet56 -> resnet8, 60'], 'even_groups'), (FAMILY, 'ckagroup_b20_even'),
              (CROSS, 'ckagroup_b20_even'), (SECOND_TEACHER, 'ckagroup_b20_even')]
    ps = []
    for study, row in tests:
        s = summary(study)
        ps.append(s['rows'][row]['vs'][s['cka_row']]['p'])
    adjusted = holm_by_hand(ps)
    family, cross, second = -3, -2, -1  # the last three tests above
    text = ' '.join(README.split())
    assert f'with p = {p_text(ps[family])} unadjusted (Holm {adjusted[family]:.3f} over the table\'s ten ' \
           f'comparisons: no difference found)' in text
    d = summary(CROSS)['rows']['ckagroup_b20_even']['vs']['ckagroup_b20']
    assert f'{interval(d)} (p = {p_text(ps[cross])}, Holm {adjusted[cross]:.3f})' in text
    d = summary(SECOND_TEACHER)['rows']['ckagroup_b20_even']['vs']['ckagroup_b20']
    assert f'no difference is found: {interval(d)} (p = {p_text(ps[second])}, Holm {adjusted[second]:.3f})' in text
    assert (f'even minus CKA groups is {interval(d)} (p = {p_text(ps[second])}, Holm {adjusted[second]:.3f} over '
            f'the grouping table\'s ten comparisons)') in text
    assert min(adjusted) >= 0.05


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
    assert f'Holm {holm_by_hand(ps)[ps.index(beta_20)]:.3f} over the grid\'s five comparisons with beta 5' in README


def test_flow_table():
    header, *rows = table_after('Does the monitored flow similarity predict accuracy across rows?')
    assert header[:3] == ['comparison', 'rows', 'Pearson r, flow CKA vs top-1']
    studies = {'resnet56 -> resnet8, 30 epochs': 'resnet56_resnet8',
               'resnet32 -> MobileNetV2, 30 epochs': 'resnet32_mobilenetv2',
               'resnet56 -> resnet8, 60 epochs': 'resnet56_resnet8_long', 'sensitivity grid': 'resnet56_resnet8_sensitivity',
               'resnet56 -> resnet8, 30 epochs (family comparison)': FAMILY,
               'resnet32 -> MobileNetV2, 30 epochs (family comparison)': CROSS,
               'resnet56 -> resnet8, 30 epochs (second teacher)': SECOND_TEACHER}
    # Pearson r needed for p < 0.05, two-sided, n points (standard tables of critical r, df = n - 2)
    critical = {3: '0.997', 5: '0.88', 6: '0.81', 9: '0.67', 12: '0.58'}
    assert [r[0] for r in rows] == list(studies)
    for name, count, r, needed in rows:
        s = summary(studies[name])
        assert count == str(len(s['rows'])) and r.startswith(f'{s["flow_vs_accuracy_pearson_over_rows"]:.2f}'), name
        if len(s['rows']) in critical:
            assert needed.startswith(critical[len(s['rows'])]), name
        if 'without the CKA term' in r:  # the same r over the rows of other methods, by hand
            others = [row for name_, row in s['rows'].items() if not name_.startswith('ckagroup')]
            assert len(others) == 9 and needed.endswith(f'(nine rows: {critical[9]})')
            assert r.endswith(f'over the nine rows without the CKA term {pearson_by_hand(others):.2f})'), name
        if 'over the four ckagroup rows' in r:  # the same r without the reference row, by hand
            others = [row for row in s['rows'].values() if row['seeds'] and row is not s['rows'][s['reference']]]
            assert len(others) == 4
            assert r.endswith(f'over the four ckagroup rows {pearson_by_hand(others):.2f})'), name


def pearson_by_hand(rows: list) -> float:
    """Pearson r of the rows' flow CKA and mean top-1."""
    xs, ys = [o['flow_cka'] for o in rows], [o['top1']['mean'] for o in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return (sum((x - mx) * (y - my) for x, y in zip(xs, ys))
            / (sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys)) ** 0.5)


def test_step_cost_table():
    header, *rows = table_after('What does each method\'s training step cost against KD?')
    s = summary('resnet56_resnet8_family')
    cost = step_costs('resnet56_resnet8_family')
    ratios = {row: timed['ratio'] for row, timed in cost['rows'].items()}
    assert len(rows) == 1 and rows[0][0] == 'CPU, AVX2' and 'AVX2' in cost['machine']
    # the ranked table's step column names the same machine
    assert cost['machine'].startswith('AMD EPYC, CPU capability AVX2') and \
        'its training step\'s time against KD\'s on a 2-core AMD EPYC, CPU capability AVX2 (below)' in ' '.join(README.split())
    for column, cell in zip(header[1:], rows[0][1:]):
        if column.startswith('ckagroup'):
            expected = ' / '.join(f'{ratios[r]:.2f}' for r in ('ckagroup_b5', 'ckagroup_b20', 'ckagroup_b20_even'))
        else:
            expected = f'{ratios[next(r for r in ratios if r.startswith(column.split()[0]))]:.2f}'
        assert cell == expected, column
    # every row of the family comparison is in the table, at the ratio its summary shows
    assert set(ratios) == set(s['rows']) - {'kd'} and all(s['rows'][r]['step_cost'] == ratios[r] for r in ratios)
    assert len(header) - 1 + 2 == len(ratios)  # ckagroup's three rows share one column


def family_pair_answer(study: str) -> str:
    """The README's per-pair answer, as it must read from the headline's verdicts."""
    h = summary(study)['headline_vs_methods']
    phrases = {'ahead': 'ahead of', 'behind': 'behind', 'no difference found': 'no difference found against'}
    groups = {phrase: [row for row, d in h['rows'].items() if d['verdict'] == verdict]
              for verdict, phrase in phrases.items()}
    return '; '.join(f'{phrase} {", ".join(rows)}' for phrase, rows in groups.items() if rows)


@pytest.mark.parametrize('study, ranked', RANKED_TABLES)
def test_family_ranked_table(study, ranked):
    header, *rows = table_after(ranked)
    assert header == ['rank', 'row', 'top-1, seeds 0-4', 'vs KD', 'Holm p', 'verdict', 'step / KD']
    s = summary(study)
    order = sorted(s['rows'], key=lambda row: -s['rows'][row]['top1']['mean'])
    assert [r[1] for r in rows] == order and [r[0] for r in rows] == [str(i + 1) for i in range(len(order))]
    for _, row, top1, against, holm, verdict, cost in rows:
        r = s['rows'][row]
        assert r['seeds'] == [0, 1, 2, 3, 4] and top1 == f'{r["top1"]["mean"]:.2f} ± {r["top1"]["std"]:.2f}', row
        if row == s['reference']:
            assert (against, holm, verdict, cost) == ('–', '–', '–', '1.00')
        else:
            d = r['vs'][s['reference']]
            assert (against, holm, verdict, cost) == (interval(d), p_text(d['holm_p']), r['verdict'],
                                                      f'{r["step_cost"]:.2f}'), row


@pytest.mark.parametrize('study, head_to_head', HEAD_TO_HEAD_TABLES)
def test_family_headline_table(study, head_to_head):
    header, *rows = table_after(head_to_head)
    h = summary(study)['headline_vs_methods']
    assert header == ['row', f'{h["headline"]} - row', 'Holm p', 'seeds ahead', f'verdict for {h["headline"]}']
    assert [r[0] for r in rows] == list(h['rows'])
    for row, difference, holm, ahead, verdict in rows:
        d = h['rows'][row]
        assert d['n'] == 5 and (difference, holm, ahead, verdict) == (interval(d), p_text(d['holm_p']),
                                                                      f'{d["ahead"]}/{d["n"]}', d['verdict']), row


def test_the_answer_per_pair():
    text = ' '.join(README.split())
    for study, pair in ((FAMILY, 'resnet56 -> resnet8'), (CROSS, 'resnet32 -> MobileNetV2')):
        assert f'{pair}: {family_pair_answer(study)}.' in text, pair
    # FitNet against the headline, in the prose: level on the first pair, ahead on the cross pair
    level = summary(FAMILY)['headline_vs_methods']['rows']['hint']
    assert level['verdict'] == 'no difference found' and level['n'] == 5
    assert f'FitNet the closest, {interval(level)} for the headline: no difference found' in text
    assert f'no difference found against FitNet ({interval(level)} for the headline, seeds 0-4, paired)' in text
    behind = summary(CROSS)['headline_vs_methods']['rows']['hint']
    assert behind['verdict'] == 'behind' and behind['ahead'] == 0 and behind['n'] == 5
    by = f'{-behind["mean"]:.2f} [{-behind["high"]:.2f}, {-behind["low"]:.2f}] points'
    assert f'behind FitNet by {by}, on every seed' in text and f'only FitNet is, by {by} on all five seeds' in text


def test_thin_margin_over_attention():
    h = summary(FAMILY)['headline_vs_methods']
    text = ' '.join(README.split())
    assert f'The margin over AT is thin (Holm {p_text(h["rows"]["attention"]["holm_p"])})' in text


def test_repeats_paragraph():
    """Item 5: the family comparison's repeats of the first pair's seeds, per seed and summarised."""
    start = README.index('**Do the runs reproduce?**')
    paragraph = ' '.join(README[start:README.index('\n\n', start)].split())
    repeats = summary(FAMILY)['repeats']
    assert set(repeats) == {'kd', 'ckagroup_b5'}
    for row, r in repeats.items():
        assert sorted(r['seeds'], key=int) == ['0', '1', '2', '3', '4'], row
        differences = ', '.join(f'{r["seeds"][seed]["difference"]:+.2f}' for seed in '01234')
        assert f'{row} {differences}' in paragraph, row
        assert f'{row} {interval(r["shift"])}, p {p_text(r["shift"]["p"])}' in paragraph, row
        assert f'{row} {r["rms_difference"]:.2f} against {r["different_seeds_rms"]:.2f}' in paragraph, row
    above = sum(abs(v['difference']) > 0.5 for r in repeats.values() for v in r['seeds'].values())
    assert f'{above} of the 10 differences exceed 0.5 points' in paragraph


def test_results_index_compares_beta_5_against_kd_in_both_comparisons():
    with open(os.path.join(ROOT, 'docs', 'results', 'README.md'), encoding='utf-8') as f:
        text = ' '.join(f.read().split())
    for study, row, tests in ((FAMILY, 'ckagroup_b5', 11), ('resnet56_resnet8', 'ckagroup', 4)):
        s = summary(study)
        d = s['rows'][row]['vs']['kd']
        assert s['family_of_tests']['tests'] == tests
        assert f'{interval(d)}, Holm {p_text(d["holm_p"])} over' in text, study


def test_cross_family_step_costs():
    cost = step_costs('resnet32_mobilenetv2_family')
    ratio = {row: f'{timed["ratio"]:.2f}' for row, timed in cost['rows'].items()}
    assert 'AVX2' in cost['machine'] and cost['order'] == 'alternating'
    assert (f'hint {ratio["hint"]}, attention {ratio["attention"]}, srrl {ratio["srrl"]}, ckagroup beta 20 '
            f'{ratio["ckagroup_b20"]} with CKA groups and {ratio["ckagroup_b20_even"]} with even groups'
            in ' '.join(README.split()))


def test_most_similar_flow_is_not_the_most_accurate_row():
    """The flow paragraph's list: in each 5-seed comparison with CKA groups, the row with the highest
    flow CKA is the CKA-groups row, and the row named is the most accurate."""
    named = {'resnet56_resnet8': 'even_groups', 'resnet32_mobilenetv2': 'random_groups',
             FAMILY: 'ckagroup_b20_even', CROSS: 'hint', SECOND_TEACHER: 'ckagroup_b20_even'}
    for study, most_accurate in named.items():
        s = summary(study)
        rows = s['rows']
        assert all(r['seeds'] == [0, 1, 2, 3, 4] for r in rows.values()), study
        flows = {name: r['flow_cka'] for name, r in rows.items() if r['flow_cka'] is not None}
        assert max(flows, key=flows.get) == s['cka_row'], study
        assert max(rows, key=lambda name: rows[name]['top1']['mean']) == most_accurate, study
    text = ' '.join(README.split())
    assert len(named) == 5
    assert ('In the five 5-seed comparisons with CKA groups the row with the highest flow similarity (CKA groups) '
            'is not the most accurate (even groups on resnet56 -> resnet8, in its family comparison and on the '
            "second teacher, random groups on resnet32 -> MobileNetV2, FitNet in that pair's family comparison)"
            in text)


def block_ranges(groups: list) -> str:
    """Teacher groups of block indices as the README writes them: '0-2, 3-9, 10-18, 19-27'."""
    return ', '.join(f'{g[0]}-{g[-1]}' if len(g) > 1 else f'{g[0]}' for g in groups)


def teacher_groups_by_seed(study: str) -> dict:
    """Seed -> the teacher groups its ckagroup_b20 run recorded, as the README writes them."""
    runs = load_runs(os.path.join(ROOT, 'docs', 'results', study))
    return {r['seed']: block_ranges(r['teacher_groups']) for r in runs if r['row'] == 'ckagroup_b20'}


def test_second_teacher_paragraph():
    start = README.index('**Does the grouping verdict hold for another teacher?**')
    text = ' '.join(README[start:README.index('\n\n', start)].split())
    s, first = summary(SECOND_TEACHER), summary(FAMILY)
    assert (s['teacher']['model'], s['teacher']['epochs']) == (first['teacher']['model'], first['teacher']['epochs'])
    assert (f'({s["teacher"]["test_top1_full"]:.2f}% on the full test set after {s["teacher"]["epochs"]} epochs, '
            f'the first {first["teacher"]["test_top1_full"]:.2f}%)') in text
    assert list(s['trained_on']) == ['Intel(R) Xeon(R) Processor, AVX512, float32'] and 'Intel Xeon (AVX512)' in text
    cka, even = (s['rows'][row]['vs']['kd'] for row in ('ckagroup_b20', 'ckagroup_b20_even'))
    assert cka['ahead'] == even['ahead'] == cka['n'] == even['n'] == 5 and s['family_of_tests']['tests'] == 2
    assert (f'(CKA groups {interval(cka)}, even groups {interval(even)}, Holm over the study\'s two tests '
            f'{p_text(cka["holm_p"])} and {p_text(even["holm_p"])})') in text
    # the teachers' CKA splits, read from the runs' records
    first_groups, second_groups = teacher_groups_by_seed(FAMILY), teacher_groups_by_seed(SECOND_TEACHER)
    assert sorted(first_groups) == sorted(second_groups) == [0, 1, 2, 3, 4]
    assert set(first_groups.values()) == {'0-9, 10-18, 19-26, 27'}
    assert 'first teacher\'s split its 28 block layers as 0-9, 10-18, 19-26 and 27 on every seed' in text
    usual = {seed: g for seed, g in second_groups.items() if seed != 3}
    assert set(usual.values()) == {'0-2, 3-9, 10-18, 19-27'} and 'the second\'s as 0-2, 3-9, 10-18 and 19-27' in text
    assert f'({second_groups[3]} on seed 3)' in text
