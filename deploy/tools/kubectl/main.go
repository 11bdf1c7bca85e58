// Command kubectl is kubectl, built from the module proxy for the tests
// that validate deploy/ (e2e/deploy_test.go) on a machine without one:
// Debian's archive has no current kubectl. It is a separate module so that
// the trunkline module does not depend on kubectl; its version is the
// kube-apiserver's of internal/kubetest.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubectl/pkg/cmd"
)

func main() {
	os.Exit(cli.Run(cmd.NewDefaultKubectlCommand()))
}
