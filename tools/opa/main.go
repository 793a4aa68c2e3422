// Command opa is the Open Policy Agent server and CLI (github.com/open-policy-agent/opa) at
// the version go.mod pins: the same OPA as the embedded engine (opa-golib-python-bindings
// 0.4.4 carries OPA v1.20.2). It is OPA's own main.go, as OPA documents building it with
// plugins: run the root command and exit with its exit code. `make opa` builds it into
// .venv/bin/opa (see build.sh).
package main

import (
	"errors"
	"os"

	"github.com/open-policy-agent/opa/cmd"
)

func main() {
	if err := cmd.RootCommand.Execute(); err != nil {
		var e *cmd.ExitError
		if errors.As(err, &e) {
			os.Exit(e.Exit)
		}
		os.Exit(1)
	}
}
