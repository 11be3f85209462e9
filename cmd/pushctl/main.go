// Command pushctl is the operator CLI of the push cluster. Run
// `pushctl --help` for its commands.
package main

import (
	"os"

	"github.com/pushcluster/push/pkg/pushctl"
)

func main() {
	app := &pushctl.App{Stdout: os.Stdout, Stderr: os.Stderr}
	os.Exit(app.Main(os.Args[1:]))
}
