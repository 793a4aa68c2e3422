"""Re-running rules and policies outside the serving path; nothing here dispatches.

    replays    a running service's replays, what-ifs, why-not, what a decision ran with
    replayer   replay recorded decisions, what-ifs with candidates, compare, summarise
    sandbox    candidates run in a child process with a time and memory budget
    scenarios  rule authors' scenario tests (`decision-service rules test`)

May import every stage below it: `app.shared`, `app.facts`, `app.rules`, `app.policy`,
`app.dispatch`, `app.decisions`.
"""
