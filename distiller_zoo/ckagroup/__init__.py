"""`--distill ckagroup` in one package: its --cka_* settings (`settings`), the teacher's CKA groups
of a run and their pairing with the student's (`teacher_groups`), and the CKA-group term with its
distiller (`distiller`). Nothing here reads or writes a run folder: the run (helper/) hands over
what it needs and logs what it returns. The CKA math itself is `cka/`'s.
"""
from distiller_zoo.ckagroup.distiller import MATRICES_FILE, CKAGroupDistiller, CKAGroupLoss
from distiller_zoo.ckagroup.settings import (GROUP_COMMAND, GROUPING_FLAGS, MONITOR_FLAGS, CKASettings, add_options,
                                             check_batch_size, check_resume_options)
from distiller_zoo.ckagroup.teacher_groups import compute_teacher_groups, pair_teacher_groups

__all__ = ['CKAGroupDistiller', 'CKAGroupLoss', 'CKASettings', 'GROUPING_FLAGS', 'GROUP_COMMAND', 'MATRICES_FILE',
           'MONITOR_FLAGS', 'add_options', 'check_batch_size', 'check_resume_options', 'compute_teacher_groups',
           'pair_teacher_groups']
