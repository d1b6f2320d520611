"""The research lab above the library: studies declared as TOML files (`study`, the shipped ones in
studies/), the runner that trains them through `helper.train` (`runner`), the final evaluation
(`evaluation`), what each raw record says about its origin (`provenance`), the summary and its table
(`summary`, `report`), the statistics (`stats`), figures (`figures`), cost estimates (`cost`), each
row's training-step cost (`step_cost`) and the command line of scripts/evidence.py (`cli`). Only
scripts/ and tests/ import it.
"""
