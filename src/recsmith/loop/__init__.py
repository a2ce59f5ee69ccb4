"""The closed loop: daily retraining, an offline gate, a staged canary release analysed
online, monitoring by slice, automatic rollback (`recsmith loop ...`, docs/loop.md).

    config      the loop's YAML (gate, release plan, alert rules, the simulated world)
    gate        the offline gate: absolute thresholds, calibration, no significant
                regression against production on the same rows
    release     the stage machine: 1% → 5% → 20% → 100%, advance / hold / roll back
    state       the loop directory's state file: which steps of which day are done
    world       the synthetic funnel day by day (drift, new users and items, a CTR trend,
                injected failures) and its requests with their true probabilities
    simulate    `recsmith loop simulate`: every step, day after day, against a live service
    timeline    the HTML timeline report
"""
