// Command build-apiserver builds and caches internal/kubetest's
// kube-apiserver (the first time: minutes) and prints its path, so that
// CI can build it before go test's timeout starts.
package main

import (
	"fmt"
	"log"
	"os"

	"github.com/trunkline/trunkline/internal/kubetest"
)

func main() {
	bin, err := kubetest.APIServer(log.Printf)
	if err != nil {
		fmt.Fprintln(os.Stderr, "build-apiserver:", err)
		os.Exit(1)
	}
	fmt.Println(bin)
}
