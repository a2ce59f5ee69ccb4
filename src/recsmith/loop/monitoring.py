def monitor_day(loop, day):
    return {"alerts": []}
