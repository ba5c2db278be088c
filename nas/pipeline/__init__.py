"""`nas pipeline`: train-supernet, evolve, export, eval, retrain and a report, in one resumable run folder.

    options.py    the stage options (-c PIPELINE.yaml sections, --set STAGE.OPTION=VALUE), checked against the
                  stages' own parsers; the resolved OUT/pipeline.yaml
    stages.py     the stages, each run in-process through `nas.cli.main`, skipped when its output is complete
    baselines.py  the archs the found one is compared with (the biggest under the budget, random ones)
    latency.py    CPU latency of an exported model at batch 1
    report.py     OUT/report.md and the self-contained OUT/report.html
"""
