"""The daily go/no-go report: notebook execution, HTML, the rollout index, the scheduled job.

* :mod:`.runner`: :func:`write_report` (one day's report, atomically) and the ERROR page;
* :mod:`.index`: ``index.html``, the rollout timeline;
* :mod:`.daily`: the scheduled job (newest export, yesterday's rollout day, lock);
* :mod:`.charts` / :mod:`.tables`: what the notebook displays;
* :mod:`.privacy`: the id scan every published file passes.

See ``docs/report.md``.
"""
