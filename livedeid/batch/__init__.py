"""Whole archives de-identified on Ray: ``livedeid batch INPUT OUTPUT``.

Lives here: what a job takes in (``inputs``: a folder walked for videos, a CSV manifest,
the UBFC-rPPG layout ``subjectN/vid.avi`` + ``ground_truth.txt`` and the PURE layout of
PNG-frame sessions with the oximeter's JSON; where each output and ground-truth copy
goes), reading the datasets' ground-truth pulse (``truth``), one video in a worker
(``video``: the same :func:`livedeid.pipeline.file_job.process_file` as ``process``, plus
its report), what makes a run resumable (``resume``: settings and input hashes, the job
record, finished reports), the Ray driver (``job``: local or existing cluster, bounded
tasks in flight, retries after a worker dies, the progress bar) and the archive summary
(``summary``: CSV, markdown, plots), rewritten as videos finish; small synthetic datasets
in both layouts for the tests and the benchmark (``synthetic``).
May import: ``core``, ``assets``, ``io``, ``tracking``, ``rppg``, ``pipeline``,
``evaluation`` (face PSNR/SSIM), ``cloak`` (the two-pass cloak). Never the CLI or Qt;
Ray only in ``job`` (an extra: ``pip install 'livedeid[batch]'``), matplotlib only in
``summary``.
"""
