"""The daily go/no-go report: notebook execution, HTML, the rollout index, the scheduled job.

* :mod:`.runner`: :func:`write_report` (one day's report, atomically) and the ERROR page;
* :mod:`.index`: ``index.html``, the rollout timeline;
* :mod:`.daily`: the scheduled job (newest export, yesterday's rollout day, lock);
* :mod:`.charts` / :mod:`.tables`: what the notebook displays;
* :mod:`.privacy`: the id scan every published file passes;
* :mod:`.plan_sections`: the QA scenarios and communication-plan sections (issue 15);
* :mod:`.confirmation`: the rollback confirmation page and its index links;
* :mod:`.performance_charts`: the post-rollout notebook's charts.

See ``docs/report.md``.
"""
