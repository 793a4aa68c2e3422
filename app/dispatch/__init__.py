"""Delivering allowed actions: the outbox, the dispatcher, executors, CloudEvents.

    delivery  executors, the outbox (due times, leases, fences) and the dispatcher
    worker    the background loop that runs delivery and triggered decisions
    echo      a stand-in executor for trying the service locally

May import `app.shared` only.
"""
