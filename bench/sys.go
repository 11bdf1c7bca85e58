package bench

import (
	"os"
	"runtime"
	"strings"

	"github.com/trunkline/trunkline/bench/bed"
	"golang.org/x/sys/unix"
)

// run runs a command and wraps a failure with its command line and stderr.
var run = bed.Run

// Machine describes the machine a report was measured on.
type Machine struct {
	CPUModel string `json:"cpu_model"`
	Kernel   string `json:"kernel"`
	Cores    int    `json:"cores"`
	Go       string `json:"go"`
}

func thisMachine() Machine {
	m := Machine{Cores: runtime.NumCPU(), Go: runtime.Version()}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}
