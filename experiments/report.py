"""summary.md: a study's summary as a markdown table with the protocol it was measured under, then
its rows ranked by top-1 (the short table a README carries)."""
from typing import Optional

from experiments.study import Study


def markdown(study: Study, summary: dict) -> str:
    teacher, student = summary['teacher'], study.student
    reference, cka_row, alpha = study.reference, study.cka_row, summary['family_of_tests']['alpha']
    cost = summary.get('step_cost')
    lines = [f'### {study.name}: {teacher["model"]} -> {student.model}',
             '',
             f'Low data: the student trains on {student.train_per_class} images per class of {study.dataset}'
             if student.train_per_class else f'The student trains on the whole {study.dataset} training set',
             f'for {summary["epochs"]} epochs; top-1 on the full test set after the last epoch. Teacher: '
             f'{teacher["test_top1_full"]:.2f}% after {teacher["epochs"]} epochs on {teacher["train_images"]} images '
             f'(its per-epoch curve on {_teacher_curve_images(study)}: last-5 minus previous-5 epoch gain '
             f'{_num(teacher["plateau_gain"])}, slope over the last 5 epochs '
             f'{_num(teacher.get("final_slope"), 3)} points/epoch; over the 5 epochs before its first learning-rate '
             f'decay {_num(teacher.get("pre_decay_slope"), 3)}). '
             'Differences are paired over seeds, with an unadjusted 95% t-interval. Against '
             f'{reference}: the two-sided paired t-test p, the Holm-adjusted p over the table\'s '
             f'{summary["family_of_tests"]["tests"]} tests against {reference}, the seeds on which the row is ahead, '
             f'and the verdict (\'ahead\' or \'behind\' where the adjusted p < {alpha}, else \'no difference found\'). '
             f'Curves and flow CKA: {summary["curves_and_flow_on"]}.'
             + (f' Headline row (declared before the runs): {study.headline}.' if study.headline else ''),
             '',
             f'| row | seeds | top-1 (mean ± std) | vs {reference} | p | Holm p | seeds ahead | verdict vs {reference} '
             f'| vs {cka_row} (CKA groups) | curve gain, last 5 epochs '
             '| slope, last 5 epochs (points/epoch) | slope, 5 epochs before the first decay | flow CKA |'
             + (f' step / {reference} |' if cost else ''),
             '|---|---|---|---|---|---|---|---|---|---|---|---|---|' + ('---|' if cost else '')]
    for row, r in summary['rows'].items():
        against = r['vs'].get(reference) or {}
        ahead = f'{against["ahead"]}/{against["n"]}' if against else '–'
        lines.append(f'| {row} | {len(r["seeds"])} | {_pm(r["top1"])} | {_diff(against)} | '
                     f'{_p(against.get("p"))} | {_p(against.get("holm_p"))} | {ahead} | {r.get("verdict", "–")} | '
                     f'{_diff(r["vs"].get(cka_row))} | {_num(r["plateau_gain"])} | {_num(r.get("final_slope"), 3)} | '
                     f'{_num(r.get("pre_decay_slope"), 3)} | {_num(r["flow_cka"], 3)} |'
                     + (f' {_cost(r)} |' if cost else ''))
    lines += ['', f'Pearson r of flow CKA and top-1 over rows: {_num(summary["flow_vs_accuracy_pearson_over_rows"], 3)}']
    users = {}  # CKA-code version -> the rows whose runs used it
    for row, r in summary['rows'].items():
        for version in r.get('cka_code_hashes') or []:
            users.setdefault(version, []).append(row)
    if users:
        lines += ['', 'CKA-term code (sha256 of every .py under cka/ and of the ckagroup code, first 12 digits): '
                  + '; '.join(f'{version[:12]}: {", ".join(rows)}' for version, rows in sorted(users.items()))]
    lines += ['', 'Trained on (CPU model or GPU, torch CPU capability, precision): '
              + '; '.join(f'{setting}: ' + ', '.join(f'{row} {_seeds(seeds)}' for row, seeds in rows.items())
                          for setting, rows in summary['trained_on'].items())]
    lines += ['', ranked(summary, reference)]
    if summary.get('headline_vs_methods'):
        lines += ['', headline_table(summary['headline_vs_methods'])]
    if summary.get('repeats'):
        lines += ['', repeats_table(summary['repeats'])]
    if cost:
        order = ('which goes first alternating each turn' if cost['order'] == 'alternating'
                 else f'{reference}\'s step first in every turn')
        lines += ['', f'Step / {reference}: the median, over {cost["repeats"]}-step runs, of one training step\'s time '
                  f'against {reference}\'s, interleaved ({order}; batch {cost["batch_size"]}, '
                  f'`scripts/evidence.py cost`), with the lowest and highest run in brackets, on {cost["machine"]}; '
                  'the per-epoch evaluation, CKA monitor and teacher grouping are not in it.']
    return '\n'.join(lines + [''])


def ranked(summary: dict, reference: str) -> str:
    """The rows by mean top-1, highest first: the paired difference against `reference` with its
    interval, the Holm-adjusted p, the verdict and (where timed) the step cost. While rows have
    different seeds, the means are over the seeds every row has (one sample of seeds for all)."""
    cost = summary.get('step_cost')
    shared = summary.get('ranked_on_seeds')
    top1 = 'top1_on_ranked_seeds' if shared else 'top1'
    if shared is None:
        intro = 'Ranked by mean top-1:'
    elif shared:
        intro = (f'Ranked by mean top-1 over seeds {", ".join(map(str, shared))}, which every row has (rows are at '
                 f'different numbers of seeds; the differences against {reference} are paired over the seeds each '
                 f'row shares with it, n):')
    else:
        intro = ('Ranked by mean top-1 over each row\'s own seeds (no seed is common to every row yet, so the '
                 'means are of different seeds):')
    lines = [intro, '',
             f'| rank | row | seeds | top-1 | vs {reference} | Holm p | verdict |'
             + (f' step / {reference} |' if cost else ''),
             '|---|---|---|---|---|---|---|' + ('---|' if cost else '')]
    order = sorted(summary['rows'].items(), key=lambda item: -(item[1][top1]['mean'] or float('-inf')))
    for rank, (row, r) in enumerate(order, 1):
        against = r['vs'].get(reference)
        lines.append(f'| {rank} | {row} | {len(r["seeds"])} | {_pm(r[top1])} | {_diff(against)} | '
                     f'{_p((against or {}).get("holm_p"))} | {r.get("verdict", "–")} |'
                     + (f' {_cost(r)} |' if cost else ''))
    return '\n'.join(lines)


def headline_table(against: dict) -> str:
    """The headline row against each of the other methods: its own family of tests."""
    headline, family = against['headline'], against['family_of_tests']
    lines = [f'The headline {headline} against each row of another method (the difference is {headline} minus '
             f'the row, paired over the seeds both have; Holm over these {family["tests"]} tests, a family of its '
             f'own; \'ahead\' or \'behind\' from {headline}\'s side where the adjusted p < {family["alpha"]}):', '',
             f'| row | {headline} - row | p | Holm p | seeds {headline} ahead | verdict for {headline} |',
             '|---|---|---|---|---|---|']
    for row, d in against['rows'].items():
        lines.append(f'| {row} | {_diff(d)} | {_p(d["p"])} | {_p(d.get("holm_p"))} | {d["ahead"]}/{d["n"]} | '
                     f'{d.get("verdict", "–")} |')
    return '\n'.join(lines)


def repeats_table(repeats: dict) -> str:
    """Rows that ran an earlier study's seeds again: per seed, both top-1s, their difference and
    where each trained."""
    lines = ['Runs repeating an earlier study\'s seeds (difference: this run minus the earlier one; flags: '
             'earlier -> this run):', '',
             '| row | repeats | seed | top-1 | earlier top-1 | difference | this run | earlier run | flags that differ |',
             '|---|---|---|---|---|---|---|---|---|']
    for row, r in repeats.items():
        for seed, s in r['seeds'].items():
            lines.append(f'| {row} | {r["of"]} | {seed} | {s["top1"]:.2f} | {s["earlier_top1"]:.2f} | '
                         f'{s["difference"]:+.2f} | {s["setting"]} | {s["earlier_setting"]} | '
                         f'{"; ".join(s["argument_differences"]) or "none"} |')
    lines += ['', 'Same seed, other run: the mean difference (a systematic shift; p of the paired t-test) and its '
              'root mean square, beside the root mean square by which runs of different seeds, one from each '
              'study, differ (sqrt of the sum of both studies\' seed variances, mean shift aside):', '']
    for row, r in repeats.items():
        p = r['shift']['p']
        lines.append(f'- {row}: shift {_diff(r["shift"])}' + (f', p {p:.3f}' if p is not None else '')
                     + f'; RMS {_num(r["rms_difference"])} against {_num(r["different_seeds_rms"])} between seeds')
    return '\n'.join(lines)


def _teacher_curve_images(study: Study) -> str:
    count = study.teacher.val_per_class
    return f'the first {count} test images per class' if count else 'the full test set'


def _seeds(seeds: list) -> str:
    """'seed 0', 'seeds 0-4' for a run of consecutive seeds, else 'seeds 0, 2'."""
    if len(seeds) == 1:
        return f'seed {seeds[0]}'
    consecutive = seeds == list(range(seeds[0], seeds[-1] + 1))
    return f'seeds {seeds[0]}-{seeds[-1]}' if consecutive else 'seeds ' + ', '.join(map(str, seeds))


def _pm(summary: dict) -> str:
    if summary['mean'] is None:
        return '–'
    return f'{summary["mean"]:.2f}' + (f' ± {summary["std"]:.2f}' if summary['std'] is not None else '')


def _diff(d: Optional[dict]) -> str:
    if not d or d['mean'] is None:
        return '–'
    if d['low'] is None:
        why = 'no interval' if d['n'] < 2 else 'the same on every seed: no test'
        return f'{d["mean"]:+.2f} (n={d["n"]}, {why})'
    return f'{d["mean"]:+.2f} [{d["low"]:+.2f}, {d["high"]:+.2f}] (n={d["n"]})'


def _p(value: Optional[float]) -> str:
    return '–' if value is None else f'{value:.3f}' if value >= 0.001 else f'{value:.1e}'


def _cost(r: dict) -> str:
    """A row's step cost: the median ratio, and the lowest and highest timing run where there were several."""
    runs = r.get('step_cost_runs') or []
    spread = f' ({min(runs):.2f}-{max(runs):.2f})' if len(runs) > 1 else ''
    return _num(r.get('step_cost')) + spread


def _num(value, digits=2) -> str:
    return '–' if value is None else f'{value:.{digits}f}'
