"""The shared fact pool: what every department has said about every subject.

    pool      posting, reading and retracting facts; owners, quotas, expiry
    triggers  the queue of decisions that a posted fact asks for

May import `app.shared` only.
"""
