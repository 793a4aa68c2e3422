"""Asking OPA: the policy files, the engines that evaluate them, and what their answers mean.

    files       a policy directory as OPA loads it: modules, tests, data, a revision
    engines     what both engines answer (`PolicyEngine`, `Answer`, `PolicyStatus`)
    embedded    OPA in this process (the Go bindings), reloading on change
    opa_native  the one call past the bindings' public API, checked against their version
    sidecar     an OPA server over HTTP, behind a circuit breaker
    bundle      the policies as an OPA bundle, for a sidecar to pull
    gate        one verdict per proposed action, fail closed
    live        a running service's gate, what it has live and reports of it, its bundle
    access      API keys to callers, and the access policy to their permissions
    testing     `decision-service policy test`, as `opa test` runs the same files
    opa_server  the real OPA server as a process, for the tests and the benchmarks

May import `app.shared` only.
"""
