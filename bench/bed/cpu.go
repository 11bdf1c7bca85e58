package bed

import (
	"context"
	"fmt"
	"math/big"
	"runtime"
	"strings"
)

// SteerVPC makes the kernel handle the frames the wire receives on cpu
// (receive packet steering on the wire veth), so everything the VPC side
// does runs there when its senders are pinned to cpu too.
//
// Which CPU receives a veth's frames is otherwise an accident: a veth's
// receive (its NAPI, or the backlog) runs on the CPU of whoever sent into
// it first and stays there while it has work. On a two-CPU bed, a TCP
// client in the wire namespace sends part of its segments from its ACK
// processing, which runs on the CPU of the agent's transmit; the trunk's
// receive — in production the NIC's queue, on the CPU its interrupt is
// steered to — then lands on the agent worker's CPU, and a flood's
// receive cost is charged to the worker. SteerVPC(c), with the generator
// and the VPC's clients on c too, keeps the VPC's work and the trunk's
// receive on c, as an operator keeps a NIC's interrupts off the dataplane's
// cores.
func (b *Bed) SteerVPC(cpu int) error {
	if cpu < 0 || cpu >= runtime.NumCPU() {
		return fmt.Errorf("steer the VPC to CPU %d: this machine has CPUs 0-%d", cpu, runtime.NumCPU()-1)
	}
	return b.setRPS(cpuMask(cpu))
}

// UnsteerVPC undoes SteerVPC.
func (b *Bed) UnsteerVPC() error { return b.setRPS("0") }

func (b *Bed) setRPS(mask string) error {
	path := "/sys/class/net/" + b.Wire.Ifname + "/queues/rx-0/rps_cpus"
	// The wire namespace's sysfs is only visible from inside it (`ip netns
	// exec` mounts it).
	if out, err := b.Command(context.Background(), b.Wire.Netns, "sh", "-c", "echo "+mask+" > "+path).CombinedOutput(); err != nil {
		return fmt.Errorf("rps_cpus %s of %s: %v: %s", mask, b.Wire.Ifname, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// cpuMask is the kernel's hex CPU mask for one CPU: groups of 32 bits,
// comma-separated.
func cpuMask(cpu int) string {
	hex := new(big.Int).Lsh(big.NewInt(1), uint(cpu)).Text(16)
	var groups []string
	for len(hex) > 8 {
		groups = append([]string{hex[len(hex)-8:]}, groups...)
		hex = hex[:len(hex)-8]
	}
	return strings.Join(append([]string{hex}, groups...), ",")
}
