// Command apiserver is kube-apiserver, built from the module proxy for
// internal/kubetest. It is a separate module so that the trunkline module
// does not depend on k8s.io/kubernetes.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
