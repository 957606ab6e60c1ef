"""`kb eval`: train on part of a labelled corpus in a scratch KB, score the rest against its gold labels.

    from kb_pipeline.evaluation.run import run_eval
    metrics = run_eval(Path("corpus"), Path("eval-out"), settings=Settings.from_env())

Modules, in the order a run uses them: split (which documents are held out), scratch (the throwaway
KB home and what is done to it), baselines (majority, TF-IDF + logistic regression, BM25, lead
sentences), scoring (metrics per task), plots (PNG files), report (report.md), run (the whole of it).
Importing this package is cheap: torch, scikit-learn and matplotlib load only when a run needs them.
"""

from kb_pipeline.evaluation.errors import EvalError

__all__ = ["EvalError"]
