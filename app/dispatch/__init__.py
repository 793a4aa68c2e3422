"""Delivering allowed actions: the outbox, the dispatcher, executors, CloudEvents.

    executors   where each action type is delivered (DECISION_EXECUTORS_FILE)
    outbox      the outbox: due times, leases, fences, parking and re-drive
    events      the CloudEvent an executor receives
    dispatcher  claims due entries and delivers them, with retries and backoff
    worker      the background loop that runs delivery and triggered decisions
    echo        a stand-in executor for trying the service locally

May import `app.shared` only.
"""
