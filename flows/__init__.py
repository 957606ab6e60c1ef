"""Prefect flows around kb_pipeline's library functions (the library itself never imports prefect).

Import `flows.runtime.prefect_environment(settings)` first: it points Prefect's home and its run logs
(flows.logs) into the KB before `prefect` is imported. Then `flows.pipeline` holds the flows and
`flows.serve` the schedules.
"""
